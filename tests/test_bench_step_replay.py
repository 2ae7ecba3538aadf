"""benchmarks/bench_step_replay.py end to end on a tiny model: both modes run, the replayed one required
(step_replay=True raises where the step is not replayed) and checked token for token against the plain one inside
the benchmark; a row per weight format and batch. No figure is judged."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_step_replay  # noqa: E402


def test_tiny_run_has_a_row_per_format_and_batch():
    with torch.inference_mode():
        table = bench_step_replay.run(torch.float32, ["none", "int8", "int4-a8"], [1, 3], new_tokens=6, repeats=1,
                                      tiny=True)
    lines = table.splitlines()
    assert lines[0].startswith("a tiny model, random weights, float32")
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [(s, b) for s in ("none", "int8", "int4-a8")
                                                            for b in ("1", "3")]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)


def test_too_few_new_tokens_is_an_error():
    with pytest.raises(ValueError, match="new_tokens must be at least 3, got 2"):
        bench_step_replay.run(torch.float32, ["none"], [1], new_tokens=2, repeats=1, tiny=True)
