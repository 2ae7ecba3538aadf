"""benchmarks/bench_perplexity.py end to end on a tiny random model: a row per case and stride, the perplexities of
gpt_fast and transformers' loop printed side by side (and checked equal inside the run). No figure is judged."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_perplexity  # noqa: E402

pytest.importorskip("transformers")


def test_tiny_run_has_a_row_per_case(capsys):
    bench_perplexity.main(["--tiny", "--tokens", "300", "--stride", "64", "30", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "kernel tier" in out
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    assert [(stride, case) for stride, case, *_ in rows] == [
        (stride, case) for stride in ("64", "30") for case in (
            "gpt_fast, 8 windows a pass", "gpt_fast, 1 window a pass", "transformers (the guide's loop)",
            "perplexity (gpt_fast / transformers)")]
    ours, theirs = rows[3][2].split(" / ")
    assert float(ours) == pytest.approx(float(theirs), rel=1e-4)  # disjoint windows: the same count and figure
