"""gpt-fast eval: a checkpoint's perplexity on held-out text or token files (gpt_fast/evaluation/perplexity.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from gpt_fast.cli.common import (
    UsageError,
    add_quantization_arguments,
    check_model_name,
    log,
    positive_int,
    quantization_kwargs,
)
from gpt_fast.evaluation.perplexity import perplexity
from gpt_fast.generation.pipeline import load_tokenizer
from gpt_fast.models.heads import OpenAIGPTLMHeadModel
from gpt_fast.training.data import data_files, load_tokens


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="a checkpoint's perplexity on text or token files",
                       description="Loss and perplexity of a checkpoint on held-out data: text files (encoded with "
                                   "the model's tokenizer), folders of them, or .bin files of uint16 token ids, read "
                                   "as one stream in windows of --seq-len tokens every --stride tokens.")
    p.add_argument("data", nargs="+", help="text files, folders (*.txt, *.text, *.md, *.bin) or .bin token files")
    p.add_argument("--model", required=True, help="checkpoint folder (config.json + weights) or hub name")
    p.add_argument("--tokenizer", help="tokenizer folder for text data (default: the model folder)")
    p.add_argument("--seq-len", type=positive_int, metavar="N", help="window length (default: n_positions)")
    p.add_argument("--stride", type=positive_int, metavar="N",
                   help="tokens between window starts (default: --seq-len, disjoint windows; smaller gives each "
                        "scored token at least seq_len - stride tokens of context)")
    p.add_argument("--batch-size", type=positive_int, help="windows per forward pass (default: 1 on a CPU, 8 on a GPU)")
    p.add_argument("--max-tokens", type=positive_int, metavar="N", help="only the first N tokens of the data")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16, float64 or auto (default float32)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", metavar="FILE", help="also write the result here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_quantization_arguments(p)


def run(args) -> int:
    check_model_name(args.model)
    files = data_files(args.data)  # a missing file is an error before the model loads
    if args.threads:
        torch.set_num_threads(args.threads)
    log(f"loading {args.model} ...")
    model = OpenAIGPTLMHeadModel.from_pretrained(args.model, dtype=args.dtype, device=args.device,
                                                 **quantization_kwargs(args))
    if args.seq_len is not None and args.seq_len > model.config.n_positions:
        raise UsageError(f"gpt-fast eval: --seq-len {args.seq_len} is longer than the model's n_positions "
                         f"({model.config.n_positions})")
    text = any(path.suffix != ".bin" for path in files)
    tokenizer = load_tokenizer(args.tokenizer or args.model) if text else None
    tokens = load_tokens([str(path) for path in files], tokenizer)
    if args.max_tokens is not None:
        tokens = tokens[:args.max_tokens]
    log(f"scoring {len(tokens):,} tokens ...")
    start = time.perf_counter()
    result = perplexity(model, tokens, args.seq_len, args.stride, args.batch_size, progress=not args.no_progress)
    seq_len = args.seq_len or model.config.n_positions
    summary = {"model": args.model, "data": [str(path) for path in files], "tokens": result.tokens,
               "loss": result.nll, "perplexity": result.perplexity, "windows": result.windows, "seq_len": seq_len,
               "stride": args.stride or seq_len, "dtype": str(model.dtype).removeprefix("torch."),
               "seconds": time.perf_counter() - start, "tokens_per_s": result.tokens_per_second}
    print(f"perplexity {result.perplexity:.4g} (loss {result.nll:.4f} nats/token) over {result.tokens:,} scored "
          f"tokens in {result.windows} windows of {seq_len} (stride {summary['stride']}), "
          f"{summary['seconds']:.1f} s ({result.tokens_per_second:,.0f} tokens/s)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0
