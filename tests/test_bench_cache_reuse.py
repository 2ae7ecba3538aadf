"""benchmarks/bench_cache_reuse.py end to end on a tiny random model (the two first tokens are checked equal inside
the run). No figure is judged."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_cache_reuse  # noqa: E402


def test_tiny_run_has_both_rows(capsys):
    bench_cache_reuse.main(["--tiny", "--dtype", "float32", "--history", "40", "--turn", "5", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["generate", "whole prompt", "past_key_values"] and "kernel tier" in out
