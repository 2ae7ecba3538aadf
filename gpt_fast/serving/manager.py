"""transformers' continuous-batching manager (`model.init_continuous_batching()`, `with
model.continuous_batching_context_manager() as manager:`) on gpt_fast's serving engine (engine.py), which runs on a
background thread of its own while the caller adds requests and reads results:

    manager = model.init_continuous_batching(generation_config)   # or the context manager, which starts and stops
    manager.start()
    request_id = manager.add_request(prompt_ids, max_new_tokens=32, streaming=True)
    for output in manager.request_id_iter(request_id):  # streaming: one output per new token (all tokens so far)
        ...
    result = manager.get_result(timeout=10)             # the next finished (or, streaming, updated) request
    manager.stop()                                       # finishes what was added, then stops (hard_stop: fails it)

Outputs are batch.BatchOutput, transformers' GenerationOutput fields (request_id, prompt_ids, generated_tokens,
logprobs, status, error, lifespan, timestamps). The settings are generate_batch's (batch.py: generation_config over
model.generation_config, the same checks and refusals, speculative decoding included); each request may set its own
max_new_tokens and eos_token_id. Differences from transformers: a request added before start() waits for it (as
there), but one added after stop() is a RuntimeError rather than a logged drop; per-request logits-processor
arguments, pause() (the engine's call() runs code on its thread between steps instead) and tensor parallelism are
not supported; warmup() does nothing (no CUDA graphs to capture); `keep_for_next_session=True` keeps the manager on
the model for the next init_continuous_batching, as there.

Throughput: by default the waiting prompts that fit a chunk are prefilled together and decode steps wait for them
(the engine's prefill_first, as generate_batch; prefill_first=False interleaves one prompt chunk per step, as the
server does, for the running streams' latency). The engine runs on a thread of its own, whose OpenMP workers share
the cores with the pool of the thread that loaded the model (engine.py): on 2 Sapphire Rapids cores, GPT-1's shape
in bf16, 16 prompts of 17-128 tokens + 32 tokens each, the manager gave 493 tokens/s against generate_batch's 679 on
the caller's thread (340 with prefill_first=False; transformers' generate_batch 191 on that workload,
docs/generation.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import queue
import threading
import time

from gpt_fast.generation.generate import merge_generation_config
from gpt_fast.serving.batch import BatchOutput, refuse_unsupported, sampling_params, speculation_settings
from gpt_fast.serving.engine import Engine
from gpt_fast.serving.errors import ServingError

MAX_QUEUE = 1 << 20  # sequences waiting for a slot: the manager queues whatever is added, as transformers'
POLL_S = 0.1  # join() looks at the engine's state at least this often


class ContinuousBatchingManager:
    def __init__(self, model, generation_config=None, continuous_batching_config=None, max_batch: int = 16,
                 prefill_first: bool = True, **kwargs):
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer (sequences decoded together), got {max_batch!r}")
        self.model = model
        self.kwargs = merge_generation_config(model, generation_config, kwargs)
        if _no_eos(self.kwargs.get("eos_token_id")):  # transformers' manager sets -1 for "no EOS"
            self.kwargs["eos_token_id"] = None
        speculation = speculation_settings(self.kwargs)
        refuse_unsupported(self.kwargs)
        self.logprobs = 0 if getattr(continuous_batching_config, "return_logprobs", False) else None
        self.engine = Engine(model, None, max_batch=max_batch, max_queue=MAX_QUEUE, prefill_first=prefill_first,
                             **speculation)
        self.output_queue: queue.Queue[BatchOutput] = queue.Queue()
        self.lock = threading.Condition()
        self.handles: dict[str, object] = {}  # request id -> the engine's RequestHandle (None before start())
        self.pending: list[tuple] = []  # requests added before start()
        self.handlers: dict[str, tuple] = {}  # request id -> (event loop, callback)
        self.remaining: dict[str, int] = {}  # request id -> its sequences not yet ended (none once cancelled)
        self.unfinished = 0  # sequences added and not yet ended, over all requests
        self.counter = itertools.count()
        self.started = self.stopping = False

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self.lock:
            if self.is_running():
                return
            self.stopping = False
            self.engine.start()
            self.started = True
            pending, self.pending = self.pending, []
        for request in pending:
            self._submit(*request)

    def is_running(self) -> bool:
        return self.started and self.engine.running

    def stop(self, block: bool = True, timeout: float | None = None, keep_for_next_session: bool = False,
             hard_stop: bool = False) -> None:
        """Takes no more requests; finishes those added (hard_stop: ends them at once, failed), then stops the
        engine's thread. block: wait for that, at most `timeout` seconds (None: no limit)."""
        with self.lock:
            self.stopping = True
            if hard_stop or self.unfinished == 0:
                self.engine.stop(timeout=0)
        if block:
            self.join(timeout)
        if keep_for_next_session:
            setattr(self.model, CACHED, self)
        elif getattr(self.model, CACHED, None) is self:
            delattr(self.model, CACHED)

    def join(self, timeout: float | None = None) -> None:
        """Waits until the requests added have ended and the engine's thread has stopped (at most timeout s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while self.unfinished and self.engine.running:
                left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
                if left <= 0:
                    return
                self.lock.wait(left)
        if self.engine.thread is not None:
            self.engine.thread.join(None if deadline is None else max(deadline - time.monotonic(), 0))

    def destroy(self) -> None:
        if self.is_running():
            self.stop(hard_stop=True)

    def warmup(self) -> None:
        """Nothing to capture ahead (no CUDA graphs): the decode steps record themselves as they first run."""

    def pause(self):
        raise NotImplementedError("pause() is not supported by gpt_fast's manager; engine.call(fn) runs fn on the "
                                  "engine's thread between two steps")

    # -- requests -------------------------------------------------------------------------------------------------
    def add_request(self, input_ids, request_id: str | None = None, max_new_tokens: int | None = None,
                    streaming: bool = False, record_timestamps: bool = False, eos_token_id=None,
                    **logit_processor_kwargs) -> str:
        if logit_processor_kwargs:
            raise NotImplementedError(f"per-request logits-processor arguments are not supported: "
                                      f"{sorted(logit_processor_kwargs)}")
        prompt = list(input_ids)
        kwargs = dict(self.kwargs)
        if max_new_tokens is not None:
            kwargs.pop("max_length", None)
            kwargs["max_new_tokens"] = max_new_tokens
        if eos_token_id is not None:
            kwargs["eos_token_id"] = None if _no_eos(eos_token_id) else eos_token_id
        params, n = sampling_params(self.model, prompt, kwargs, self.logprobs)
        with self.lock:
            if self.stopping:
                raise RuntimeError("the continuous-batching manager was stopped: it takes no more requests")
            request_id = f"req_{next(self.counter)}" if request_id is None else request_id
            if request_id in self.handles:
                raise ValueError(f"a request with id {request_id!r} was already added")
            ids = [request_id] + [f"{request_id}__child#{j}" for j in range(1, n)]
            outputs = [BatchOutput(key, list(prompt)) for key in ids]
            self.unfinished += n
            self.remaining[request_id] = n
            self.handles[request_id] = None
            request = (prompt, ids, outputs, params, n, streaming, record_timestamps)
            if not self.started:
                self.pending.append(request)
                return request_id
        self._submit(*request)
        return request_id

    def add_requests(self, inputs, max_new_tokens: int | None = None, streaming: bool = False,
                     record_timestamps: bool = False, **logit_processor_kwargs) -> list[str]:
        return [self.add_request(ids, None, max_new_tokens, streaming, record_timestamps, **logit_processor_kwargs)
                for ids in inputs]

    def _submit(self, prompt, ids, outputs, params, n, streaming, record_timestamps) -> None:
        def sink(output):
            out = outputs[output.index]
            ended = out.add(output, record_timestamps)
            if streaming or ended:
                self._deliver(copy.deepcopy(out))
            if ended:
                self._ended(ids[0], 1)

        try:
            handle = self.engine.submit(prompt, params, sink, n=n)
        except ServingError as error:
            self._ended(ids[0], n)
            raise ValueError(f"add_request: {error.message}") from None
        with self.lock:
            self.handles[ids[0]] = handle

    def _ended(self, request_id: str, count: int) -> None:
        """count of the request's sequences ended (or cancelled); once none is left anywhere and the manager is
        stopping, the engine stops after its current step."""
        with self.lock:
            count = min(count, self.remaining.get(request_id, 0))  # a cancelled request was counted already
            if count:
                self.remaining[request_id] -= count
                self.unfinished -= count
            if self.unfinished == 0 and self.stopping:
                self.engine.stop(timeout=0)
            self.lock.notify_all()

    def _deliver(self, output: BatchOutput) -> None:
        handler = self.handlers.get(output.request_id)
        if handler is None:
            self.output_queue.put(output)
            return
        loop, callback = handler
        if output.is_finished():
            self.handlers.pop(output.request_id, None)
        loop.call_soon_threadsafe(callback, output)

    def cancel_request(self, request_id: str) -> None:
        """Stops the request: nothing more is delivered for it."""
        with self.lock:
            handle = self.handles.get(request_id)
            self.pending = [r for r in self.pending if r[1][0] != request_id]
        if handle is not None:
            self.engine.cancel(handle)
        self._ended(request_id, self.remaining.get(request_id, 0))

    def register_result_handler(self, request_id: str, callback) -> None:
        """callback(output) on the running asyncio loop (call_soon_threadsafe) for each of the request's results
        instead of the queue; dropped after the last."""
        self.handlers[request_id] = (asyncio.get_running_loop(), callback)

    # -- results --------------------------------------------------------------------------------------------------
    def get_result(self, request_id: str | None = None, timeout: float | None = None) -> BatchOutput | None:
        """The next result (of request_id, when given: another one goes back to the queue and None is returned, as
        in transformers), or None after timeout seconds or when no result can come any more."""
        if self.output_queue.empty() and not self.is_running():
            return None
        try:
            result = self.output_queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if request_id is not None and result.request_id != request_id:
            self.output_queue.put(result)
            return None
        return result

    def __iter__(self):
        while self.is_running() or not self.output_queue.empty():
            result = self.get_result(timeout=0.1)
            if result is not None:
                yield result

    def request_id_iter(self, request_id: str):
        while self.is_running() or not self.output_queue.empty():
            result = self.get_result(request_id, timeout=0.1)
            if result is not None:
                yield result
                if result.is_finished():
                    return


def _no_eos(eos_token_id) -> bool:
    return eos_token_id == -1 or eos_token_id == [-1]


CACHED = "_gpt_fast_batching_manager"  # the model attribute stop(keep_for_next_session=True) keeps a manager in


def init_continuous_batching(model, generation_config=None, continuous_batching_config=None, workload_hints=None,
                             **kwargs) -> ContinuousBatchingManager:
    """model.init_continuous_batching(): the manager a stop(keep_for_next_session=True) kept, else a new one (not
    started). workload_hints is accepted and changes nothing; kwargs are generation settings and max_batch."""
    cached = getattr(model, CACHED, None)
    if cached is not None:
        return cached
    return ContinuousBatchingManager(model, generation_config, continuous_batching_config, **kwargs)


@contextlib.contextmanager
def continuous_batching_context_manager(model, generation_config=None, block: bool = True,
                                        timeout: float | None = None, continuous_batching_config=None,
                                        persistent_manager: bool = False, warmup: bool = True, workload_hints=None,
                                        **kwargs):
    """model.continuous_batching_context_manager(): a started manager, stopped on leaving (finishing its requests
    when block) and kept on the model for the next call with persistent_manager."""
    manager = init_continuous_batching(model, generation_config, continuous_batching_config, **kwargs)
    manager.start()
    try:
        yield manager
    finally:
        manager.stop(block=block, timeout=timeout, keep_for_next_session=persistent_manager)


def destroy_cached_continuous_batching_manager(model) -> None:
    manager = getattr(model, CACHED, None)
    if manager is not None:
        manager.destroy()
        delattr(model, CACHED)
