"""gpt-fast convert: rewrite a checkpoint as safetensors and/or in another dtype, optionally quantized."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gpt_fast
from gpt_fast.cli.common import add_quantization_arguments, log, quantization_kwargs
from gpt_fast.names import parse_dtype

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ARCHITECTURES = ("OpenAIGPTLMHeadModel", "OpenAIGPTDoubleHeadsModel", "OpenAIGPTForSequenceClassification",
                 "OpenAIGPTModel")


def add_parser(sub) -> None:
    convert = sub.add_parser("convert", help="rewrite a checkpoint as safetensors and/or in another dtype",
                             description="Loads SRC (.bin or .safetensors) and saves config.json + "
                                         "model.safetensors (and any tokenizer files) into DST.")
    convert.add_argument("source", help="checkpoint folder")
    convert.add_argument("destination", help="output folder")
    convert.add_argument("--dtype", help="float32, bfloat16, float16, float64 (default: as stored)")
    convert.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in DESTINATION")
    add_quantization_arguments(convert, "; a quantized checkpoint loads only in gpt_fast")


def run(args) -> int:
    source, destination = Path(args.source).expanduser(), Path(args.destination).expanduser()
    if not source.is_dir():
        raise FileNotFoundError(f"no such model folder: {args.source}")
    if (destination / "config.json").exists() and not args.overwrite:
        raise FileExistsError(f"{args.destination} already holds a checkpoint (pass --overwrite to replace it)")
    if destination.resolve() == source.resolve():
        raise ValueError("DESTINATION must differ from SOURCE")
    dtype = parse_dtype(args.dtype) if args.dtype else "auto"
    config = json.loads((source / "config.json").read_text()) if (source / "config.json").is_file() else {}
    architecture = (config.get("architectures") or ["OpenAIGPTLMHeadModel"])[0]
    cls = getattr(gpt_fast, architecture if architecture in ARCHITECTURES else "OpenAIGPTLMHeadModel")
    log(f"loading {source} as {cls.__name__} ...")
    model = cls.from_pretrained(source, dtype=dtype, **quantization_kwargs(args))
    quantized = "" if model.quantization is None else f" {model.quantization.scheme}"
    log(f"saving {model.dtype}{quantized} safetensors to {destination} ...")
    model.save_pretrained(destination)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
    log("done")
    return 0
