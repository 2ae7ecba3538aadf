"""What the gpt-fast commands share: the one-line-error argument parser, argument types and the progress log."""

from __future__ import annotations

import argparse
import sys


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


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
