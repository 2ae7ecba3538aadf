"""Load benchmark of `gpt-fast serve` at the GPT-1 shape with random weights, on loopback only, bounded in
requests and time (after vLLM's benchmark_serving.py; the load generator is gpt_fast/serving/loadgen.py). Run as
benchmarks/bench_serve.py or `gpt-fast bench --serve`:

    python benchmarks/bench_serve.py [--concurrency 1,4,16] [--rate R] [--num-prompts 32] [--max-seconds 90]
                                     [--dtype auto] [--json out.json] [--png out.png]

A child process builds the random model, measures its batch-1 generate() (time to first token of a 32-token
prompt and seconds per later token, as `gpt-fast bench` does; again after the load, the faster of the two used),
then serves it on 127.0.0.1 at a free port. This
process sends streaming completions with random token-id prompts of 32-256 tokens and 64-256 output tokens: first
batch-1 through HTTP (one request at a time, the same 32-token prompt shape), then each max-concurrency level
(and Poisson arrivals at --rate when given). Printed as JSON: request throughput, output tokens/s, mean / median /
p99 TTFT, TPOT and ITL per run; ratios against the batch-1 rate measured in the same run; and the share of the
server's CPU time spent on its HTTP thread (uvicorn's event loop: parsing, JSON, SSE) over the load; and output tokens
per second of server CPU time against batch-1 generate()'s, a figure that a busy shared machine moves less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import torch

from gpt_fast.cli.benchmark import check_matplotlib, time_generation
from gpt_fast.cli.machine import cpu_name, malloc_heap, status_bytes
from gpt_fast.models.configuration import OpenAIGPTConfig
from gpt_fast.models.heads import OpenAIGPTLMHeadModel
from gpt_fast.ops import cpu_isa
from gpt_fast.tokenization.tokenizer import OpenAIGPTTokenizerFast

MODEL_NAME = "gpt1-random"


# -- the server (child process) -------------------------------------------------------------------------------------
def thread_cpu_seconds(native_id: int) -> float:
    """user + system CPU seconds of one thread of this process (Linux /proc)."""
    with open(f"/proc/self/task/{native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_child(args) -> None:
    from gpt_fast.serving.http import build_app  # the serve extra (FastAPI, uvicorn), like launch
    from gpt_fast.serving.launch import BackgroundServer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = {"n_layer": 2, "n_embd": 64, "n_head": 2} if args.tiny else {}  # tests: a small model, same vocab
    model = OpenAIGPTLMHeadModel(OpenAIGPTConfig(**shape)).to(getattr(torch, args.dtype)).eval()  # GPT-1 shape
    tokenizer = OpenAIGPTTokenizerFast.from_pretrained("openai-gpt")
    ids = torch.randint(0, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    time_generation(model, ids, 8)  # warm-up (packs the small-M weights)

    def batch1() -> dict:  # the best of 3, as `gpt-fast bench` quotes it; CPU seconds per token too
        runs, cpu = [], []
        for _ in range(3):
            start = time.process_time()
            runs.append(time_generation(model, ids, 64))
            cpu.append((time.process_time() - start) / 64)
        ttft, per_token = min(r[0] for r in runs), min(r[1] for r in runs)
        return {"ttft_ms": 1e3 * ttft, "per_token_ms": 1e3 * per_token, "tok_s": 1 / per_token,
                "cpu_ms_per_token": 1e3 * min(cpu)}

    first = batch1()
    # The engine runs on this thread, the one that built the model, as `gpt-fast serve` runs it (why:
    # gpt_fast/serving/engine.py); the commands from stdin are read on another and generate() goes to the engine's.
    app, engine = build_app(model, tokenizer, MODEL_NAME, max_batch=args.max_batch, max_queue=args.max_queue,
                            start_engine=False)
    with BackgroundServer(app) as server:
        http_thread, engine_thread = server.thread.native_id, threading.get_native_id()

        def commands() -> None:  # "cpu": the CPU seconds so far; "batch1": generate() again; end of input: stop
            try:
                for line in sys.stdin:
                    if line.strip() == "batch1":
                        print(json.dumps(engine.call(batch1)), flush=True)
                    if line.strip() == "cpu":
                        print(json.dumps({"process_cpu_s": time.process_time(),
                                          "rss_mb": status_bytes("VmRSS") / 2**20, "heap": malloc_heap(),
                                          "http_thread_cpu_s": thread_cpu_seconds(http_thread),
                                          "engine_thread_cpu_s": thread_cpu_seconds(engine_thread)}), flush=True)
            finally:
                engine.stop()

        def ready() -> None:  # the engine takes requests from now on
            print(json.dumps({"url": server.url, "dtype": args.dtype, "threads": torch.get_num_threads(),
                              "generate_batch1": first}), flush=True)
            threading.Thread(target=commands, name="gpt-fast-bench-commands", daemon=True).start()

        engine.run(on_start=ready)


# -- the load (this process) ----------------------------------------------------------------------------------------
class Child:
    def __init__(self, args):
        child = "import sys; from gpt_fast.cli.serve_benchmark import main; sys.exit(main())"
        command = [sys.executable, "-c", child, "--child", "--dtype", args.dtype,
                   "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        if args.tiny:
            command.append("--tiny")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self.read_line(600)

    def read_line(self, timeout: float) -> dict:
        box = {}
        reader = threading.Thread(target=lambda: box.setdefault("line", self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not box.get("line"):
            raise RuntimeError("the benchmark server did not answer")
        return json.loads(box["line"])

    def ask(self, command: str, timeout: float = 30) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read_line(timeout)

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def default_dtype() -> str:
    return "bfloat16" if cpu_isa.at_least("avx512_bf16") else "float32"


def run_line(summary: dict) -> str:
    """One run in a line; its median TPOT is None when no request completed with two tokens or more."""
    tpot = summary["tpot_ms"]["median"]
    return (f"rate={summary['rate']} concurrency={summary['concurrency']}: {summary['output_tok_s']:.1f} output "
            f"tok/s, median TPOT {'-' if tpot is None else f'{tpot:.1f} ms'}, {summary['requests_failed']} failed")


def run(args) -> dict:
    from gpt_fast.serving.loadgen import random_requests, run_load

    child = Child(args)
    try:
        url, vocab = child.ready["url"], 40478
        result = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_avg_before": os.getloadavg(),
                  "server": child.ready, "runs": []}
        batch1 = random_requests(4, vocab, (32, 32), (64, 64), seed=1)
        asyncio.run(run_load(url, MODEL_NAME, batch1[:1], concurrency=1, max_seconds=60))  # warm-up
        result["http_batch1"] = asyncio.run(run_load(url, MODEL_NAME, batch1, concurrency=1, max_seconds=60))
        settings = [(None, c) for c in args.concurrency] + ([(args.rate, None)] * args.rate_runs if args.rate else [])
        for rate, concurrency in settings:
            specs = random_requests(args.num_prompts, vocab, (32, 256), (64, 256), seed=2)
            before = child.ask("cpu")
            summary = asyncio.run(run_load(url, MODEL_NAME, specs, rate=rate, concurrency=concurrency,
                                           max_seconds=args.max_seconds))
            after = child.ask("cpu")
            process = after["process_cpu_s"] - before["process_cpu_s"]
            summary["server_cpu_s"] = process
            summary["output_tok_per_server_cpu_s"] = summary["output_tokens"] / process  # robust to a shared machine
            summary["server_rss_mb_before_after"] = [before["rss_mb"], after["rss_mb"]]
            summary["server_heap_mb_after"] = after["heap"] and {k: v / 2**20 for k, v in after["heap"].items()}
            summary["http_thread_cpu_share"] = (after["http_thread_cpu_s"] - before["http_thread_cpu_s"]) / process
            result["runs"].append(summary)
            print(run_line(summary), file=sys.stderr)
        result["load_avg_after"] = os.getloadavg()
        again = child.ask("batch1", 600)  # the machine is shared: batch-1 measured before and after the load
    finally:
        child.close()
    before = result["server"]["generate_batch1"]
    base = min(before, again, key=lambda b: b["per_token_ms"])
    result["generate_batch1"] = {"before": before, "after": again, "used": base}
    result["ratios"] = [{
        "rate": r["rate"], "concurrency": r["concurrency"],
        "output_tok_s_over_batch1": r["output_tok_s"] / base["tok_s"],
        "median_tpot_over_batch1_per_token": (r["tpot_ms"]["median"] or float("nan")) / base["per_token_ms"],
        "tokens_per_cpu_s_over_batch1": r["output_tok_per_server_cpu_s"] * base["cpu_ms_per_token"] / 1e3,
    } for r in result["runs"]]
    http_ttft = result["http_batch1"]["ttft_ms"]["median"]
    result["http_batch1_ttft_minus_generate_ms"] = None if http_ttft is None else http_ttft - base["ttft_ms"]
    return result


def save_png(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if r["concurrency"]]
    levels = [r["concurrency"] for r in runs]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(levels, [r["output_tok_s"] for r in runs], "o-")
    left.set(xlabel="concurrent streams", ylabel="output tokens/s", title="throughput")
    for key in ("median", "p99"):
        right.plot(levels, [r["tpot_ms"][key] for r in runs], "o-", label=f"TPOT {key}")
    right.set(xlabel="concurrent streams", ylabel="ms", title="time per output token")
    right.legend()
    figure.tight_layout()
    figure.savefig(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="16", help="comma-separated max-concurrency levels (default 16)")
    parser.add_argument("--rate", type=float, help="also a run of Poisson arrivals at this many requests/s")
    parser.add_argument("--rate-runs", type=int, default=1,
                        help="that many Poisson runs one after another on the same server (its memory across them "
                             "shows whether it stays flat under overload)")
    parser.add_argument("--num-prompts", type=int, default=32, help="requests per run (default 32)")
    parser.add_argument("--max-seconds", type=float, default=90, help="stop sending after this long, per run")
    parser.add_argument("--dtype", default="auto", help="bfloat16 / float32 (auto: bf16 where the CPU has it)")
    parser.add_argument("--threads", type=int, help="the server's torch threads")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-queue", type=int, default=256)
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--png", help="also plot throughput and TPOT against concurrency (needs matplotlib)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # a 2-layer model, for tests
    args = parser.parse_args(argv)
    if args.dtype == "auto":
        args.dtype = default_dtype()
    if args.child:
        serve_child(args)
        return 0
    if args.png:
        check_matplotlib()  # before the run, not after it
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.rate_runs < 1 or (args.rate is not None and args.rate <= 0):
        parser.error("--rate must be positive and --rate-runs at least 1")
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")
    if args.png:
        save_png(result, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
