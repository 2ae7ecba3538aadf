"""The serving engine's decode step at 1 and at 16 rows, in process (no HTTP, no sampling), on a random
GPT-1-shape model: what continuous batching's throughput rests on (issue 14: 16 streams at >= 8x batch-1 output
tokens/s needs a 16-row step to cost at most 2x a 1-row step).

    python benchmarks/bench_engine_step.py [--rows 1 16] [--dtype bf16] [--context 64] [--threads 1] [--cpu-time]

Each case builds the engine (gpt_fast.serving.Engine, not started) and times IncrementalDecoder.step over its slot
cache rows [0, rows), exactly as Engine.decode_step runs it, every row at --context cached positions (the lengths
are put back after each step, so every step attends over the same lengths). Cases run alternately (timing.py),
best and median of --repeats rounds; --cpu-time times thread CPU time, robust to a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import machine_description, time_alternating

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.generation.decoder import IncrementalDecoder
from gpt_fast.serving import Engine

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def step_fn(engine: Engine, rows: int, context: int):
    decoder = IncrementalDecoder(engine.model, engine.slots.rows(rows), engine.plan)
    lengths = engine.slots.lengths[:rows]
    tokens = torch.randint(0, engine.config.vocab_size, (rows,), generator=torch.Generator().manual_seed(rows))

    def step():
        lengths.fill_(context)
        return decoder.step(tokens)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--context", type=int, default=64, help="cached positions per row at each step")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true", help="time thread CPU time, not wall time")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = OpenAIGPTLMHeadModel(OpenAIGPTConfig()).eval().to(DTYPES[args.dtype])
    engine = Engine(model, tokenizer=None, max_batch=max(args.rows))
    clock = time.thread_time if args.cpu_time else time.perf_counter
    with torch.inference_mode():
        steps = {rows: step_fn(engine, rows, args.context) for rows in args.rows}
        samples = time_alternating(steps, repeats=args.repeats, warmup=2, min_time=0.2, clock=clock)
    print(f"{machine_description()}, {args.dtype}, context {args.context}, "
          f"{'thread CPU time' if args.cpu_time else 'wall time'}")
    base = min(samples[args.rows[0]])
    for rows, s in samples.items():
        best, median = min(s), sorted(s)[len(s) // 2]
        print(f"{rows:3d} rows: best {best * 1e3:7.2f} ms, median {median * 1e3:7.2f} ms per step, "
              f"{rows / best:7.1f} tok/s, {best / base:5.2f}x the {args.rows[0]}-row step")


if __name__ == "__main__":
    main()
