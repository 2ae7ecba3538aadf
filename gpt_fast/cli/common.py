"""What the gpt-fast commands share: the one-line-error argument parser, argument types and the progress log."""

from __future__ import annotations

import argparse
import sys

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


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


QUANTIZATIONS = ("none", *SCHEMES)  # none, int8, int4, int4-a8


def add_quantization_arguments(parser, help_suffix: str = "") -> None:
    """--quantization {none,int8,int4,int4-a8} and --group-size (int4's group; see docs/quantization.md)."""
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                        help="quantization applied at load (default none; int4-a8: int4 weights with activations "
                             "rounded to int8 per group; a checkpoint saved quantized loads quantized anyway)"
                             + help_suffix)
    parser.add_argument("--group-size", type=positive_int, default=32,
                        help="int4: input features per scale/zero group, dividing 768 (default 32)")


def quantization_kwargs(args) -> dict:
    """from_pretrained's keyword arguments for the --quantization / --group-size options."""
    if args.quantization == "none":
        return {}
    return {"quantization": args.quantization, "quantization_group_size": args.group_size}
