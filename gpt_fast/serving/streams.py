"""RequestStream: a request's prompts submitted to the engine, their Outputs brought over to asyncio.

The engine calls each sink on its own thread; the sink hands the Output to the event loop with
call_soon_threadsafe, so the loop never blocks on the engine and the engine never waits for a client. Choice
numbering is OpenAI's: prompt p's choice i is index p * n + i.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gpt_fast.serving.engine import Engine
from gpt_fast.serving.params import SamplingParams
from gpt_fast.serving.sequence import Output


class RequestStream:
    def __init__(self, engine: Engine, prompts: list[list[int]], params: SamplingParams, n: int):
        self.engine = engine
        self.n = n
        self.prompts = prompts
        self.queue: asyncio.Queue[tuple[int, Output]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.handles = []
        try:
            for p, prompt in enumerate(prompts):
                def sink(output, p=p):
                    loop.call_soon_threadsafe(self.queue.put_nowait, (p, output))
                self.handles.append(engine.submit(prompt, params, sink, n))
        except Exception:
            self.cancel()  # the prompts already queued of a request that is refused
            raise

    async def outputs(self) -> AsyncIterator[tuple[int, Output]]:
        """(choice index, Output) until every choice has finished."""
        running = len(self.prompts) * self.n
        while running:
            p, output = await self.queue.get()
            if output.finish_reason is not None:
                running -= 1
            yield p * self.n + output.index, output

    def cancel(self) -> None:
        for handle in self.handles:
            self.engine.cancel(handle)
