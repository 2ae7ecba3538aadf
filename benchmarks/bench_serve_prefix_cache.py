"""The serving engine's prompt prefix cache (`gpt-fast serve --prefix-cache-size N`) against the plain engine: time
to first token of prompts that share a long prefix (a system prompt, few-shot examples) and of prompts that share
nothing (the cache's cost when it never hits), GPT-1's shape with random weights, alternating in one run.

    python benchmarks/bench_serve_prefix_cache.py [--dtype bfloat16] [--prefix 448] [--suffix 16] [--requests 8]
                                                  [--repeats 3] [--threads 2]

Each engine runs its loop on the main thread, as `gpt-fast serve` does; a second thread sends the requests one at a
time (max_tokens 1) and times each from submit to its token. "shared prefix": every prompt is the same --prefix
random tokens followed by --suffix tokens of its own (the first request of a round fills the cache; the median is
over the others); "nothing shared": prompts of the same total length with no common start. Per case: median TTFT
(best round and median round) and the ratio to the plain engine's. Every request's token is checked against the
plain engine's.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import time

import torch
from engine_client import DTYPES, add_common_arguments, apply_threads, random_model, with_client
from timing import format_table, machine_description

from gpt_fast.ops import cpu_isa
from gpt_fast.serving import Engine, SamplingParams


def first_tokens(engine: Engine, prompts: list[list[int]]) -> tuple[list[int], list[float]]:
    """One request at a time through the engine -> (each first token, each TTFT in s)."""

    def client(engine: Engine, result: dict) -> None:
        tokens, times = [], []
        for prompt in prompts:
            outputs = queue.Queue()
            start = time.perf_counter()
            engine.submit(prompt, SamplingParams(max_tokens=1, temperature=0), outputs.put)
            output = outputs.get(timeout=600)
            times.append(time.perf_counter() - start)
            tokens += output.tokens
        result["tokens"], result["times"] = tokens, times

    result = with_client(engine, client)
    return result["tokens"], result["times"]


def run(dtype: torch.dtype, prefix: int, suffix: int, requests: int, repeats: int, tiny: bool = False) -> str:
    model = random_model(dtype, tiny)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    shared = torch.randint(0, vocab, (prefix,), generator=generator).tolist()
    texts = {"shared prefix": [shared + torch.randint(0, vocab, (suffix,), generator=generator).tolist()
                               for _ in range(requests)],
             "nothing shared": torch.randint(0, vocab, (requests, prefix + suffix), generator=generator).tolist()}
    engines = {"plain": Engine(model, None, max_batch=1),
               "prefix cache": Engine(model, None, max_batch=1, prefix_cache_size=requests)}
    expected = {text: first_tokens(engines["plain"], prompts)[0] for text, prompts in texts.items()}  # warm-up too
    medians = {(text, name): [] for text in texts for name in engines}
    for _ in range(repeats):
        for text, prompts in texts.items():
            for name, engine in engines.items():
                if engine.prefix_cache is not None:
                    engine.prefix_cache.entries.clear()  # each round starts cold: its first request fills it
                tokens, times = first_tokens(engine, prompts)
                if tokens != expected[text]:
                    raise AssertionError(f"{name}, {text}: first tokens differ from the plain engine's")
                medians[(text, name)].append(statistics.median(times[1:]))
    rows = []
    for (text, name), samples in medians.items():
        base = min(medians[(text, "plain")])
        rows.append([text, name, 1e3 * min(samples), 1e3 * statistics.median(samples), base / min(samples)])
    header = ["prompts", "engine", "TTFT ms (best round)", "TTFT ms (median round)", "x plain"]
    model_shape = "tiny" if tiny else "GPT-1"
    return (f"{model_shape} shape, random weights, {str(dtype).removeprefix('torch.')}, {requests} requests one at a "
            f"time, {prefix} + {suffix}-token prompts, max_tokens 1, median TTFT of requests 2..{requests} per round, "
            f"{repeats} alternating rounds; {machine_description()}, kernel tier {cpu_isa.level()}\n\n"
            + format_table(header, rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--prefix", type=int, default=448)
    parser.add_argument("--suffix", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8)
    args = parser.parse_args(argv)
    apply_threads(args)
    print(run(DTYPES[args.dtype], args.prefix, args.suffix, args.requests, args.repeats, args.tiny))


if __name__ == "__main__":
    main()
