"""What the gpt-fast commands share: the one-line-error argument parser, argument types and the progress log."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt_fast.checkpoints.hub import looks_like_hub_id
from gpt_fast.quantization.config import SCHEMES


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


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


ASSISTANT_SETTINGS = ("num_assistant_tokens", "assistant_confidence_threshold", "num_assistant_tokens_schedule")


def add_assistant_arguments(parser) -> None:
    """--assistant-model and its settings (gpt-fast generate and serve; transformers' names and defaults)."""
    parser.add_argument("--assistant-model", metavar="MODEL",
                        help="assisted decoding: a smaller checkpoint with the same vocabulary drafts tokens that the "
                             "model verifies several at a time (same tokens, fewer passes; loaded with --dtype and "
                             "--device, unquantized)")
    parser.add_argument("--num-assistant-tokens", type=positive_int, metavar="N",
                        help="with --assistant-model: the most draft tokens a round (default: the assistant's "
                             "generation_config, else 20)")
    parser.add_argument("--assistant-confidence-threshold", type=probability, metavar="P",
                        help="with --assistant-model: a draft ends after a token the assistant gives less "
                             "probability (default: the assistant's generation_config, else 0.4; 0: never)")
    parser.add_argument("--num-assistant-tokens-schedule", choices=("constant", "heuristic", "heuristic_transient"),
                        help="with --assistant-model: a constant draft length, or +2 after a round that kept every "
                             "draft and -1 otherwise (default: the assistant's generation_config, else constant)")


def check_assistant_arguments(args, command: str) -> None:
    """Before any loading: an assistant's settings need --assistant-model, and it excludes prompt lookup."""
    if args.assistant_model is None:
        given = ["--" + name.replace("_", "-") for name in ASSISTANT_SETTINGS if getattr(args, name) is not None]
        if given:
            raise UsageError(f"gpt-fast {command}: {', '.join(given)} needs --assistant-model")
    elif args.prompt_lookup_num_tokens is not None:
        raise UsageError(f"gpt-fast {command}: pass --prompt-lookup-num-tokens or --assistant-model, not both")


def check_model_name(name: str) -> None:
    """--model before any loading: an existing folder, or a name the hub could resolve."""
    if not Path(name).expanduser().exists() and not looks_like_hub_id(name):
        raise FileNotFoundError(f"no such model folder: {name} (nor is it a hub model id like 'org/name')")


def load_assistant(args, **options):
    """--assistant-model loaded in --dtype onto --device, unquantized (options: more from_pretrained arguments), or
    None without one."""
    if args.assistant_model is None:
        return None
    from gpt_fast.models.heads import OpenAIGPTLMHeadModel  # as the commands load their models, when one runs

    log(f"loading the assistant {args.assistant_model} ...")
    return OpenAIGPTLMHeadModel.from_pretrained(args.assistant_model, dtype=args.dtype, device=args.device, **options)


def assistant_kwargs(args) -> dict:
    """The assistant's settings given on the command line, as generate() / Engine keyword arguments."""
    return {name: getattr(args, name) for name in ASSISTANT_SETTINGS if getattr(args, name) is not None}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


QUANTIZATIONS = ("none", *SCHEMES)  # none, int8, int4, int4-a8, int8-a8


def add_quantization_arguments(parser, help_suffix: str = "") -> None:
    """--quantization {none,int8,int4,int4-a8,int8-a8} and --group-size (int4's group, and the activations' group
    of the -a8 schemes; see docs/quantization.md)."""
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                        help="quantization applied at load (default none; int4-a8, int8-a8: int4 / int8 weights with "
                             "activations rounded to int8 per group; a checkpoint saved quantized loads quantized "
                             "anyway)"
                             + help_suffix)
    parser.add_argument("--group-size", type=positive_int, default=32,
                        help="int4: input features per scale/zero group, and the -a8 schemes' activation group, "
                             "dividing 768 (default 32)")


def quantization_kwargs(args) -> dict:
    """from_pretrained's keyword arguments for the --quantization / --group-size options."""
    if args.quantization == "none":
        return {}
    return {"quantization": args.quantization, "quantization_group_size": args.group_size}
