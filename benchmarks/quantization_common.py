"""What benchmarks/quantization_accuracy.py and benchmarks/quantization_sensitivity.py share: their common
command-line arguments and the token windows they read (validation windows, calibration windows)."""

from __future__ import annotations

import argparse

import torch

from gpt_fast.quantization.accuracy import windows
from gpt_fast.quantization.calibration import read_calibration_text, spread_windows


def add_common_arguments(parser: argparse.ArgumentParser, *, dtype: str, calibration_help: str,
                         calibration_windows: int, calibration_required: bool = False) -> None:
    """--model, --text, --dtype, --max-windows, --batch, --calibration, --calibration-windows, --threads, --json."""
    parser.add_argument("--model", required=True, help="checkpoint folder")
    parser.add_argument("--text", required=True, help="validation text file (UTF-8)")
    parser.add_argument("--dtype", default=dtype)
    parser.add_argument("--max-windows", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2, help="windows per forward")
    parser.add_argument("--calibration", required=calibration_required, help=calibration_help)
    parser.add_argument("--calibration-windows", type=int, default=calibration_windows)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", metavar="PATH")


def parse_common(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """The parsed arguments, with --threads applied."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def read_validation_windows(tokenizer, args: argparse.Namespace, window: int) -> torch.Tensor:
    """(count <= --max-windows, window) token ids: --text cut into non-overlapping windows."""
    with open(args.text, encoding="utf-8") as handle:
        ids = torch.tensor(tokenizer(handle.read())["input_ids"], dtype=torch.long)
    return windows(ids, window)[:args.max_windows]


def read_calibration_windows(tokenizer, args: argparse.Namespace, window: int) -> torch.Tensor:
    """(count <= --calibration-windows, window) token ids spread over --calibration (a file or a folder of *.txt)."""
    return spread_windows(tokenizer(read_calibration_text(args.calibration))["input_ids"], window,
                          args.calibration_windows)
