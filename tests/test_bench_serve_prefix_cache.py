"""benchmarks/bench_serve_prefix_cache.py end to end on a tiny random model: a row per prompt set and engine, every
request's first token checked against the plain engine's inside the run. No figure is judged."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_serve_prefix_cache  # noqa: E402


def test_tiny_run_has_a_row_per_case(capsys):
    bench_serve_prefix_cache.main(["--tiny", "--dtype", "float32", "--prefix", "40", "--suffix", "8", "--requests",
                                   "3", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "kernel tier" in out
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    assert [row[:2] for row in rows] == [["shared prefix", "plain"], ["shared prefix", "prefix cache"],
                                         ["nothing shared", "plain"], ["nothing shared", "prefix cache"]]



def test_tiny_run_with_an_assistant(capsys):
    bench_serve_prefix_cache.main(["--tiny", "--dtype", "float32", "--prefix", "40", "--suffix", "8", "--requests",
                                   "3", "--repeats", "1", "--assistant", "2x32"])
    out = capsys.readouterr().out
    assert "a 2 x 32 assistant" in out and "time to the last token ms (best round)" in out
    assert out.count("| prefix cache ") == 2 and out.count("| model's prefix cache only ") == 2
