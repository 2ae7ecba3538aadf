"""The serving engine's prompt prefix cache (`gpt-fast serve --prefix-cache-size N`) against the plain engine: time
to first token of prompts that share a long prefix (a system prompt, few-shot examples) and of prompts that share
nothing (the cache's cost when it never hits), GPT-1's shape with random weights, alternating in one run.

    python benchmarks/bench_serve_prefix_cache.py [--dtype bfloat16] [--prefix 448] [--suffix 16] [--requests 8]
                                                  [--repeats 3] [--threads 2] [--assistant 6x384]

Each engine runs its loop on the main thread, as `gpt-fast serve` does; a second thread sends the requests one at a
time (max_tokens 1) and times each from submit to its token. "shared prefix": every prompt is the same --prefix
random tokens followed by --suffix tokens of its own (the first request of a round fills the cache; the median is
over the others); "nothing shared": prompts of the same total length with no common start. Per case: median TTFT
(best round and median round) and the ratio to the plain engine's. Every request's token is checked against the
plain engine's.

--assistant LxW: both engines decode with a random assistant model of L layers W wide (heads of 64; 2 drafts a
round, threshold 0), which keeps a prefix cache of its own beside the engine's (a third engine keeps the engine's
only, the assistant prefilling each prompt whole); requests take max_tokens 4 and are timed to their last token, so
that the assistant's catch-up of the prompt (its first round) is in the time.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import time

import torch
from engine_client import DTYPES, add_common_arguments, apply_threads, random_assistant, random_model, with_client
from timing import format_table, machine_description

from gpt_fast.ops import cpu_isa
from gpt_fast.serving import Engine, SamplingParams


def timed_requests(engine: Engine, prompts: list[list[int]], max_tokens: int = 1) -> tuple[list[int], list[float]]:
    """One request at a time through the engine -> (every request's tokens, each one's time to its last token in s:
    its TTFT with max_tokens 1)."""

    def client(engine: Engine, result: dict) -> None:
        tokens, times = [], []
        for prompt in prompts:
            outputs = queue.Queue()
            start = time.perf_counter()
            engine.submit(prompt, SamplingParams(max_tokens=max_tokens, temperature=0), outputs.put)
            while (output := outputs.get(timeout=600)).finish_reason is None:
                tokens += output.tokens
            times.append(time.perf_counter() - start)
            tokens += output.tokens
        result["tokens"], result["times"] = tokens, times

    result = with_client(engine, client)
    return result["tokens"], result["times"]


def run(dtype: torch.dtype, prefix: int, suffix: int, requests: int, repeats: int, tiny: bool = False,
        assistant: tuple[int, int] | None = None) -> str:
    model = random_model(dtype, tiny)
    drafting, max_tokens = {}, 1
    if assistant:
        layers, width = assistant
        small = random_assistant(dtype, layers, width, max(1, width // 64), seed=1)
        drafting = dict(assistant_model=small, num_assistant_tokens=2, assistant_confidence_threshold=0.0)
        max_tokens = 4
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    shared = torch.randint(0, vocab, (prefix,), generator=generator).tolist()
    texts = {"shared prefix": [shared + torch.randint(0, vocab, (suffix,), generator=generator).tolist()
                               for _ in range(requests)],
             "nothing shared": torch.randint(0, vocab, (requests, prefix + suffix), generator=generator).tolist()}
    engines = {"plain": Engine(model, None, max_batch=1, **drafting),
               "prefix cache": Engine(model, None, max_batch=1, prefix_cache_size=requests, **drafting)}
    if assistant:  # the engine's prefix cache alone, the assistant prefilling every prompt whole (as before it had one)
        engines["model's prefix cache only"] = Engine(model, None, max_batch=1, prefix_cache_size=requests, **drafting)
        engines["model's prefix cache only"].speculation.drafting.prefix_cache = None
    expected = {text: timed_requests(engines["plain"], prompts, max_tokens)[0]  # warm-up too
                for text, prompts in texts.items()}
    medians = {(text, name): [] for text in texts for name in engines}
    for _ in range(repeats):
        for text, prompts in texts.items():
            for name, engine in engines.items():
                for cache in (engine.prefix_cache, engine.speculation and engine.speculation.drafting.prefix_cache):
                    if cache:
                        cache.entries.clear()  # each round starts cold: its first request fills it
                tokens, times = timed_requests(engine, prompts, max_tokens)
                if tokens != expected[text]:
                    raise AssertionError(f"{name}, {text}: tokens differ from the plain engine's")
                medians[(text, name)].append(statistics.median(times[1:]))
    rows = []
    for (text, name), samples in medians.items():
        base = min(medians[(text, "plain")])
        rows.append([text, name, 1e3 * min(samples), 1e3 * statistics.median(samples), base / min(samples)])
    what = "time to the last token" if assistant else "TTFT"
    header = ["prompts", "engine", f"{what} ms (best round)", f"{what} ms (median round)", "x plain"]
    model_shape = "tiny" if tiny else "GPT-1"
    return (f"{model_shape} shape, random weights, {str(dtype).removeprefix('torch.')}, {requests} requests one at a "
            f"time, {prefix} + {suffix}-token prompts, max_tokens {max_tokens}"
            + (f", a {assistant[0]} x {assistant[1]} assistant (2 drafts a round)" if assistant else "")
            + f", median {what} of requests 2..{requests} per round, "
            f"{repeats} alternating rounds; {machine_description()}, kernel tier {cpu_isa.level()}\n\n"
            + format_table(header, rows))


def assistant_shape(text: str) -> tuple[int, int]:
    layers, _, width = text.partition("x")
    valid = layers.isdigit() and width.isdigit() and int(layers) > 0 and int(width) > 0
    if not valid or int(width) % max(1, int(width) // 64):
        raise argparse.ArgumentTypeError(f"expected LAYERSxWIDTH, the width a multiple of its heads (width // 64), "
                                         f"got {text!r}")
    return int(layers), int(width)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--prefix", type=int, default=448)
    parser.add_argument("--suffix", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--assistant", type=assistant_shape, metavar="LxW",
                        help="both engines draft with a random assistant model of L layers W wide (e.g. 6x384)")
    args = parser.parse_args(argv)
    apply_threads(args)
    print(run(DTYPES[args.dtype], args.prefix, args.suffix, args.requests, args.repeats, args.tiny, args.assistant))


if __name__ == "__main__":
    main()
