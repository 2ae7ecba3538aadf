"""gpt-fast convert: rewrite a checkpoint as safetensors and/or in another dtype, optionally quantized."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gpt_fast
from gpt_fast.cli.common import UsageError, add_quantization_arguments, log, positive_int, quantization_kwargs
from gpt_fast.names import parse_dtype
from gpt_fast.quantization.calibration import DEFAULT_WINDOWS, read_calibration_text, spread_windows

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
    convert.add_argument("--calibration", metavar="PATH",
                         help="choose the int4/int8 codes with GPTQ from this calibration text (a UTF-8 file, or a "
                              "folder whose *.txt files are read in name order), tokenized with SRC's tokenizer; "
                              "text the model is not evaluated on (e.g. its training split). Default: round to "
                              "nearest")
    convert.add_argument("--calibration-windows", type=positive_int, default=DEFAULT_WINDOWS, metavar="N",
                         help=f"GPTQ: at most N windows of n_positions tokens, spread evenly over the calibration "
                              f"text (default {DEFAULT_WINDOWS})")


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
    if args.calibration is not None:
        model = quantize_with_gptq(cls, source, dtype, args)
    else:
        model = cls.from_pretrained(source, dtype=dtype, **quantization_kwargs(args))
    quantized = "" if model.quantization is None else f" {model.quantization.scheme}"
    log(f"saving {model.dtype}{quantized} safetensors to {destination} ...")
    model.save_pretrained(destination)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
    log("done")
    return 0


def quantize_with_gptq(cls, source: Path, dtype, args):
    """SRC loaded in dtype, then quantized with GPTQ from --calibration (tokenized with SRC's tokenizer)."""
    if args.quantization == "none":
        raise UsageError("gpt-fast convert: --calibration chooses the quantized codes with GPTQ: pass --quantization "
                         "int4 or int8")
    from gpt_fast.generation.pipeline import load_tokenizer

    text = read_calibration_text(args.calibration)
    model = cls.from_pretrained(source, dtype=dtype)
    ids = load_tokenizer(str(source))(text)["input_ids"]
    windows = spread_windows(ids, model.config.n_positions, args.calibration_windows)
    group = f" (group {args.group_size})" if args.quantization.startswith("int4") else ""
    log(f"GPTQ {args.quantization}{group} from {windows.shape[0]} calibration windows of {windows.shape[1]} tokens "
        f"({args.calibration}) ...")
    return model.quantize(args.quantization, args.group_size, method="gptq", calibration=windows)
