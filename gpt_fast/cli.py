"""The `gpt-fast` command: generate text, benchmark generation, convert checkpoints.

    echo "The future of AI is" | gpt-fast generate --model DIR --do-sample --seed 0
    gpt-fast generate "The future of AI is" --model DIR --max-new-tokens 40
    gpt-fast bench [--quick] [--json out.json] [--png out.png]
    gpt-fast convert SRC DST [--dtype bf16]

Progress goes to stderr, results to stdout. Every error prints one line `gpt-fast: error: ...` and exits with a
non-zero status (2 for bad command lines, 1 otherwise); no traceback.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (then exit 2), not usage + message."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> Parser:
    parser = Parser(prog="gpt-fast", description="Fast OpenAI GPT (GPT-1): generate, benchmark, convert.")
    sub = parser.add_subparsers(dest="command", metavar="{generate,bench,convert}", parser_class=Parser)
    sub.required = True

    gen = sub.add_parser("generate", help="continue a prompt (argument or stdin), streaming to the terminal",
                         description="Continue a prompt. The prompt is the argument, or stdin when omitted.")
    gen.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    gen.add_argument("--model", required=True, help="checkpoint folder (config.json + weights) or hub name")
    gen.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    gen.add_argument("--max-new-tokens", type=positive_int, help="tokens to generate (default 50)")
    gen.add_argument("--max-length", type=positive_int, help="total length, prompt included")
    gen.add_argument("--min-new-tokens", type=int)
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--repetition-penalty", type=float)
    gen.add_argument("--num-return-sequences", type=positive_int, default=1)
    gen.add_argument("--eos-token-id", type=int)
    gen.add_argument("--seed", type=int, help="makes sampling reproducible")
    gen.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto (default float32)")
    gen.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    gen.add_argument("--attn-implementation", choices=("auto", "eager", "sdpa", "fused"), default="auto")
    gen.add_argument("--no-stream", action="store_true", help="print the text at the end instead of streaming")

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
    bench.add_argument("--n-layer", type=positive_int, help=argparse.SUPPRESS)  # smaller models for tests
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--png", metavar="PATH", help="also plot decode tokens/s (needs matplotlib)")

    convert = sub.add_parser("convert", help="rewrite a checkpoint as safetensors and/or in another dtype",
                             description="Loads SRC (.bin or .safetensors) and saves config.json + "
                                         "model.safetensors (and any tokenizer files) into DST.")
    convert.add_argument("source", help="checkpoint folder")
    convert.add_argument("destination", help="output folder")
    convert.add_argument("--dtype", help="float32, bfloat16, float16 (default: as stored)")
    convert.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in DESTINATION")
    return parser


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- generate -----------------------------------------------------------------------------------------------------
def read_prompt(args) -> str:
    if args.prompt is not None:
        prompt = args.prompt
    elif sys.stdin is None or sys.stdin.isatty():
        raise UsageError("gpt-fast generate: give a prompt as an argument or on stdin (see gpt-fast generate --help)")
    else:
        prompt = sys.stdin.read()
    prompt = prompt.rstrip("\n")
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    return prompt


def generation_kwargs(args) -> dict:
    names = ("max_new_tokens", "max_length", "min_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty",
             "eos_token_id", "seed")
    kwargs = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.max_new_tokens is None and args.max_length is None:
        kwargs["max_new_tokens"] = 50
    kwargs["do_sample"] = args.do_sample
    kwargs["num_return_sequences"] = args.num_return_sequences
    return kwargs


def command_generate(args) -> int:
    from gpt_fast.heads import OpenAIGPTLMHeadModel
    from gpt_fast.pipeline import load_tokenizer
    from gpt_fast.streaming import TextStreamer

    prompt = read_prompt(args)
    if not Path(args.model).expanduser().exists() and ("/" in args.model[1:] or args.model.startswith((".", "/"))):
        raise FileNotFoundError(f"no such model folder: {args.model}")
    start = time.perf_counter()
    log(f"loading {args.model} ...")
    attn = None if args.attn_implementation == "auto" else args.attn_implementation
    model = OpenAIGPTLMHeadModel.from_pretrained(args.model, dtype=args.dtype, device=args.device,
                                                 attn_implementation=attn)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    log(f"loaded in {time.perf_counter() - start:.1f} s ({model.dtype}, {model.device})")
    input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if input_ids.shape[-1] == 0:
        raise ValueError("the prompt is empty after tokenization")
    kwargs = generation_kwargs(args)
    stream = not args.no_stream and args.num_return_sequences == 1
    if stream:
        print(prompt, end="", flush=True)
        kwargs["streamer"] = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    start = time.perf_counter()
    sequences = model.generate(input_ids, **kwargs).cpu()
    elapsed = time.perf_counter() - start
    new = sequences.shape[1] - input_ids.shape[1]
    if not stream:
        prompt_chars = len(tokenizer.decode(input_ids[0].tolist(), skip_special_tokens=True))
        for i, sequence in enumerate(sequences):
            if len(sequences) > 1:
                print(f"=== sequence {i + 1} ===")
            print(prompt + tokenizer.decode(sequence.tolist(), skip_special_tokens=True)[prompt_chars:], flush=True)
    log(f"{new} new tokens x {len(sequences)} in {elapsed:.2f} s ({new * len(sequences) / elapsed:.1f} tokens/s)")
    return 0


# -- bench --------------------------------------------------------------------------------------------------------
def command_bench(args) -> int:
    from gpt_fast import benchmark

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
    overrides["device"] = args.device
    overrides["transformers"] = not args.no_transformers
    overrides["transformers_full"] = args.transformers_full
    if args.n_layer:
        overrides["config_overrides"] = {"n_layer": args.n_layer}
    if args.threads:
        import torch

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


# -- convert ------------------------------------------------------------------------------------------------------
def command_convert(args) -> int:
    import json

    from gpt_fast import heads, modeling
    from gpt_fast.checkpoint import parse_dtype

    source, destination = Path(args.source).expanduser(), Path(args.destination).expanduser()
    if not source.is_dir():
        raise FileNotFoundError(f"no such model folder: {args.source}")
    if (destination / "config.json").exists() and not args.overwrite:
        raise FileExistsError(f"{args.destination} already holds a checkpoint (pass --overwrite to replace it)")
    if destination.resolve() == source.resolve():
        raise ValueError("DESTINATION must differ from SOURCE")
    dtype = parse_dtype(args.dtype) if args.dtype else "auto"
    config = json.loads((source / "config.json").read_text()) if (source / "config.json").is_file() else {}
    classes = {name: getattr(heads, name) for name in ("OpenAIGPTLMHeadModel", "OpenAIGPTDoubleHeadsModel",
                                                       "OpenAIGPTForSequenceClassification")}
    classes["OpenAIGPTModel"] = modeling.OpenAIGPTModel
    architecture = (config.get("architectures") or ["OpenAIGPTLMHeadModel"])[0]
    cls = classes.get(architecture, heads.OpenAIGPTLMHeadModel)
    log(f"loading {source} as {cls.__name__} ...")
    model = cls.from_pretrained(source, dtype=dtype)
    log(f"saving {model.dtype} safetensors to {destination} ...")
    model.save_pretrained(destination)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
    log("done")
    return 0


COMMANDS = {"generate": command_generate, "bench": command_bench, "convert": command_convert}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(f"gpt-fast: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpt-fast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as error:  # one clear line, no traceback
        message = str(error) or type(error).__name__
        print(f"gpt-fast: error: {message.splitlines()[0] if message else type(error).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
