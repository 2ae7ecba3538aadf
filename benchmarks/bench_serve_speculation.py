"""Prompt lookup decoding in the serving engine (`gpt-fast serve --prompt-lookup-num-tokens N`) against the plain
engine, one request at a time (the latency case) and --concurrency requests at once, GPT-1's shape with random
weights, alternating in one run.

    python benchmarks/bench_serve_speculation.py [--dtype bfloat16] [--new-tokens 128] [--lookup 2 4 8]
                                                 [--concurrency 4] [--repeats 3] [--threads 2]

Each engine runs its loop on the main thread, as `gpt-fast serve` does (gpt_fast/serving/engine.py says why), and a
second thread submits the greedy requests (32-token prompts) together and waits for them. Per case: decode
tokens/s over all its requests, from the first token to the last (best and median over rounds), the share of
drafts kept, and the ratio to the plain engine's best with as many requests. As in bench_prompt_lookup.py two
bounds are timed: "repeating", the random model's greedy text, which soon repeats itself (nearly every draft
kept), and "always rejected", every draft replaced by tokens the model does not choose (each pass verifies N
tokens and keeps none). generate() with and without prompt lookup is timed in the same rounds, for the engine's
cost against it. Every case's tokens are checked against the plain engine's.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import statistics
import time

import torch
from bench_prompt_lookup import rejected_drafts
from engine_client import DTYPES, add_common_arguments, apply_threads, random_model, with_client
from timing import format_table, machine_description

from gpt_fast.ops import cpu_isa
from gpt_fast.serving import Engine, SamplingParams
from gpt_fast.serving.observer import EngineObserver


class DraftCounts(EngineObserver):
    def __init__(self):
        self.drafted = self.kept = 0

    def speculated(self, drafted: int, kept: int) -> None:
        self.drafted += drafted
        self.kept += kept


def serve(engine: Engine, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float]:
    """Greedy requests submitted together through the engine -> (each one's tokens, seconds per decoded token over
    all of them: from the first request's first token to the last token)."""

    def client(engine: Engine, result: dict) -> None:
        outputs, times, tokens = queue.Queue(), [], [[] for _ in prompts]
        for i, prompt in enumerate(prompts):
            engine.submit(prompt, SamplingParams(max_tokens=new_tokens, temperature=0),
                          lambda output, i=i: outputs.put((i, output)))
        finished = 0
        while finished < len(prompts):
            i, output = outputs.get(timeout=600)
            times += [time.perf_counter()] * len(output.tokens)
            tokens[i] += output.tokens
            finished += output.finish_reason is not None
        later = len(times) - 1  # tokens after the first one
        result["tokens"], result["per_token"] = tokens, (times[-1] - times[0]) / later

    result = with_client(engine, client)
    return result["tokens"], result["per_token"]


def generate_one(model, prompt: list[int], new_tokens: int, lookup: int | None) -> tuple[list[int], float]:
    """generate() timed per token after the first (a streamer's clock, as the engine's)."""
    times = []

    class Clock:
        def put(self, value):
            times.append(time.perf_counter())

        def end(self):
            pass

    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, streamer=Clock(),
                             prompt_lookup_num_tokens=lookup)
    times = times[1:]  # the streamer hears the prompt first
    return out[0, len(prompt):].tolist(), (times[-1] - times[0]) / (len(times) - 1)


def run(dtype: torch.dtype, new_tokens: int, lookups: list[int], repeats: int, concurrency: int,
        tiny: bool = False) -> str:
    model = random_model(dtype, tiny)
    prompts = torch.randint(0, model.config.vocab_size, (concurrency, 32),
                            generator=torch.Generator().manual_seed(0)).tolist()
    cases = {}  # (path, requests at once, drafts, N) -> (engine or None, its DraftCounts or None)
    for at_once in dict.fromkeys((1, concurrency)):
        cases[("engine", at_once, "plain", None)] = Engine(model, None, max_batch=concurrency), None
        for n in lookups:
            for drafts in ("repeating", "always rejected"):
                counts = DraftCounts()
                cases[("engine", at_once, drafts, n)] = Engine(model, None, max_batch=concurrency,
                                                               prompt_lookup_num_tokens=n, observer=counts), counts
    cases[("generate()", 1, "plain", None)] = None, None
    cases[("generate()", 1, "repeating", lookups[0])] = None, None

    def one(case):
        (_, at_once, drafts, n), (engine, _) = case, cases[case]
        scope = rejected_drafts(model.config.vocab_size) if drafts == "always rejected" else contextlib.nullcontext()
        with scope:
            if engine is None:
                tokens, per_token = generate_one(model, prompts[0], new_tokens, n)
                return [tokens], per_token
            return serve(engine, prompts[:at_once], new_tokens)

    expected = {at_once: one(("engine", at_once, "plain", None))[0] for at_once in (1, concurrency)}
    per_token = {case: [] for case in cases}
    for _ in range(repeats + 1):  # a first round to warm up (packs, replay recordings), not counted
        for case in cases:
            tokens, seconds = one(case)
            if tokens != expected[case[1]]:
                raise AssertionError(f"{case}: tokens differ from the plain engine's")
            per_token[case].append(seconds)
    rows = []
    for case, (_, counts) in cases.items():
        samples = per_token[case][1:]
        base = min(per_token[("engine", case[1], "plain", None)][1:])
        kept = "-" if not counts or not counts.drafted else f"{counts.kept / counts.drafted:.0%}"
        rows.append([case[0], case[1], case[2], "-" if case[3] is None else case[3], 1 / min(samples),
                     1 / statistics.median(samples), kept, base / min(samples)])
    header = ["path", "requests at once", "drafts", "N", "decode tok/s best", "tok/s median", "drafts kept",
              "x plain engine"]
    shape = "tiny" if tiny else "GPT-1"
    return (f"{shape} shape, random weights, {str(dtype).removeprefix('torch.')}, 32-token prompts + {new_tokens} "
            f"greedy tokens each, tok/s over all requests at once, best of {repeats} alternating rounds; "
            f"{machine_description()}, kernel tier {cpu_isa.level()}\n\n" + format_table(header, rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--lookup", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--concurrency", type=int, default=4, help="requests at once in the batched cases")
    args = parser.parse_args(argv)
    apply_threads(args)
    print(run(DTYPES[args.dtype], args.new_tokens, args.lookup, args.repeats, args.concurrency, args.tiny))


if __name__ == "__main__":
    main()
