"""gpt-fast bench: generation latency at the GPT-1 shape with random weights, against transformers (benchmark.py)."""

from __future__ import annotations

import torch

from gpt_fast.cli import benchmark
from gpt_fast.cli.common import QUANTIZATIONS, UsageError, log, positive_int
from gpt_fast.cli.serve_benchmark import main as serve_benchmark


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="decode/prefill latency vs transformers at the GPT-1 shape (random weights)",
                           description="Benchmarks generation with random weights at the GPT-1 shape; prints a table.")
    bench.add_argument("--quick", action="store_true", help="fewer tokens and repeats (about a minute)")
    bench.add_argument("--new-tokens", type=positive_int, help="new tokens per run (default 128)")
    bench.add_argument("--prompt-length", type=positive_int, help="prompt tokens (default 32)")
    bench.add_argument("--dtypes", help="comma-separated: bf16,fp32,fp16 (default bf16,fp32)")
    bench.add_argument("--repeats", type=positive_int, help="runs per figure, best kept (default 3)")
    bench.add_argument("--batch", type=positive_int, help="the batched decode row (default 8)")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    bench.add_argument("--no-transformers", action="store_true", help="skip transformers' generate")
    bench.add_argument("--transformers-full", action="store_true",
                       help="time transformers' whole generate (minutes) instead of sampling its per-step cost")
    bench.add_argument("--quantization", metavar="LIST",
                       help="comma-separated from none,int8,int4,int4-a8,int8-a8: also run the default backend's model "
                            "quantized that way, alternating with the unquantized runs (e.g. none,int8,int4)")
    bench.add_argument("--group-size", type=positive_int, default=32,
                       help="int4's group size, and the -a8 schemes' activation group (default 32)")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--png", metavar="PATH", help="also plot decode tokens/s (needs matplotlib)")
    bench.add_argument("--serve", action="store_true",
                       help="instead, the load benchmark of gpt-fast serve (benchmarks/bench_serve.py's defaults; "
                            "--quick, --threads, --json, --png apply)")



def run(args) -> int:
    if args.serve:
        return run_serve(args)
    if args.png:
        benchmark.check_matplotlib()
    overrides = {}
    for name in ("new_tokens", "prompt_length", "repeats", "batch"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.dtypes:
        dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
        unknown = [d for d in dtypes if d not in benchmark.DTYPES]
        if unknown or not dtypes:
            raise UsageError(f"gpt-fast bench: --dtypes takes {','.join(benchmark.DTYPES)}, got {args.dtypes!r}")
        overrides["dtypes"] = dtypes
    if args.quantization is not None:
        schemes = [q.strip() for q in args.quantization.split(",") if q.strip()]
        unknown = [q for q in schemes if q not in QUANTIZATIONS]
        if unknown or not schemes:
            raise UsageError(f"gpt-fast bench: --quantization takes {','.join(QUANTIZATIONS)}, got "
                             f"{args.quantization!r}")
        overrides["quantizations"] = tuple(dict.fromkeys(q for q in schemes if q != "none"))
        if any(q.startswith("int4") for q in schemes) and 768 % args.group_size:
            raise UsageError(f"gpt-fast bench: --group-size must divide 768 (and 3072), got {args.group_size}")
    overrides["group_size"] = args.group_size
    overrides["device"] = args.device
    overrides["transformers"] = not args.no_transformers
    overrides["transformers_full"] = args.transformers_full
    if args.threads:
        torch.set_num_threads(args.threads)
    options = benchmark.BenchOptions.quick(**overrides) if args.quick else benchmark.BenchOptions(**overrides)
    result = benchmark.run(options)
    print(benchmark.format_table(result), flush=True)
    if args.json:
        benchmark.save_json(result, args.json)
        log(f"wrote {args.json}")
    if args.png:
        benchmark.save_png(result, args.png)
        log(f"wrote {args.png}")
    return 0


def run_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise UsageError(f"gpt-fast bench --serve needs pip install gpt_fast[serve] ({error})") from None

    argv = ["--num-prompts", "8", "--max-seconds", "30"] if args.quick else []
    for flag, value in (("--threads", args.threads), ("--json", args.json), ("--png", args.png)):
        if value is not None:
            argv += [flag, str(value)]
    return serve_benchmark(argv)
