"""benchmarks/bench_serve_speculation.py end to end on a tiny random model: a row per case, drafts always kept or
never kept as each case says, and every case's tokens checked against the plain engine's inside the run. No figure
is judged."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_serve_speculation  # noqa: E402


def test_tiny_run_has_a_row_per_case(capsys):
    bench_serve_speculation.main(["--tiny", "--dtype", "float32", "--new-tokens", "12", "--lookup", "2", "3",
                                  "--concurrency", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "kernel tier" in out
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    cases = {(path, at_once, drafts, n): kept for path, at_once, drafts, n, _, _, kept, _ in rows}
    engine = [(at_once, drafts, n) for at_once in "12" for drafts, n in
              (("plain", "-"), ("repeating", "2"), ("always rejected", "2"), ("repeating", "3"),
               ("always rejected", "3"))]
    assert list(cases) == [("engine", *case) for case in engine] + [("generate()", "1", "plain", "-"),
                                                                    ("generate()", "1", "repeating", "2")]
    for at_once in "12":
        assert cases[("engine", at_once, "always rejected", "2")] == "0%"
        assert cases[("engine", at_once, "repeating", "2")] not in ("-", "0%")
