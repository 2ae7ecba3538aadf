"""benchmarks/quantization_accuracy.py's --schemes parsing: each scheme with its group, the default group (32) for
the schemes that have one (int4's weight groups, the -a8 schemes' activation groups) and none for int8."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quantization_accuracy  # noqa: E402


def test_schemes_get_their_groups():
    assert quantization_accuracy.parse_schemes("int8,int4:64,int4-a8,int8-a8,int8-a8:128") == [
        ("int8", None), ("int4", 64), ("int4-a8", 32), ("int8-a8", 32), ("int8-a8", 128)]
