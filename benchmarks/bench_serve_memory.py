"""Memory of the serving engine under waves of requests: the process's resident memory and glibc's heap (in use /
free, gpt_fast.cli.machine.malloc_heap) after each wave, GPT-1 shape with random weights, in process (no HTTP).

    python benchmarks/bench_serve_memory.py [--waves 6] [--requests 120] [--threads 1] [--no-buckets]
                                            [--json benchmarks/results/bench_serve_memory.json]

Each wave submits --requests requests at once (random prompts of 32-256 token ids, 4-16 sampled tokens each, the
engine's 16 slots, an unbounded queue) and waits for all of them: overload in the sense of bench_serve's Poisson
runs, without the HTTP layer, whose own memory tests/test_serve_loadgen.py covers. --no-buckets runs the prefill
chunks unpadded (gpt_fast/serving/prefill.py's padded_rows switched off), as before the row buckets, for the A/B.
Memory is what is measured, not speed; one thread keeps a busy shared machine from stretching the run.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time

import torch
from timing import machine_description

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.cli.machine import malloc_heap, status_bytes
from gpt_fast.serving import Engine, SamplingParams
from gpt_fast.serving import prefill as prefill_module
from gpt_fast.tokenization.tokenizer import OpenAIGPTTokenizerFast

MiB = 2**20


def snapshot(label: str, seconds: float | None = None) -> dict:
    heap = malloc_heap() or {}
    row = {"after": label, "seconds": seconds, "rss_mib": status_bytes("VmRSS") / MiB,
           **{f"heap_{key}_mib": value / MiB for key, value in heap.items()}}
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return row


def waves(engine: Engine, args, rows: list) -> None:
    rng = random.Random(0)
    try:
        for wave in range(args.waves):
            done = threading.Semaphore(0)
            start = time.perf_counter()
            for _ in range(args.requests):
                prompt = [rng.randrange(40478) for _ in range(rng.randint(32, 256))]
                params = SamplingParams(max_tokens=rng.randint(4, 16), temperature=0.8, seed=rng.randrange(2**31))
                engine.submit(prompt, params, lambda out, done=done: out.finish_reason and done.release())
            for _ in range(args.requests):
                done.acquire()
            rows.append(snapshot(f"wave {wave + 1}", time.perf_counter() - start))
    finally:
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waves", type=int, default=6)
    parser.add_argument("--requests", type=int, default=120, help="requests per wave")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-buckets", action="store_true", help="prefill chunks unpadded (the A/B baseline)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.no_buckets:
        prefill_module.padded_rows = lambda rows, small_rows, room: rows
    torch.manual_seed(0)
    model = OpenAIGPTLMHeadModel(OpenAIGPTConfig()).to(torch.bfloat16).eval()
    tokenizer = OpenAIGPTTokenizerFast.from_pretrained("openai-gpt")
    engine = Engine(model, tokenizer, max_batch=16, max_queue=args.requests)
    rows = [snapshot("model built")]
    # The loop on this thread, the one that built the model (gpt_fast/serving/engine.py says why).
    engine.run(on_start=lambda: threading.Thread(target=waves, args=(engine, args, rows), daemon=True).start())
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": machine_description(), "buckets": not args.no_buckets, "threads": args.threads,
                       "rows": rows}, out, indent=2)


if __name__ == "__main__":
    main()
