"""benchmarks/bench_serve_assisted.py end to end on tiny random models (its --gpt1-bounds cases): a row per case, the
oracle's drafts all kept, and every case's tokens the plain engine's. No figure is judged."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_serve_assisted  # noqa: E402


def test_tiny_run_has_a_row_per_case(capsys):
    bench_serve_assisted.main(["--tiny", "--dtype", "float32", "--new-tokens", "12", "--num-assistant-tokens", "2",
                               "3", "--threshold", "0", "--lookup", "2", "--num-prompts", "2", "--concurrency", "2",
                               "--repeats", "1"])
    out = capsys.readouterr().out
    assert "kernel tier" in out
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    cases = {(at_once, drafts, n): (kept, same) for at_once, drafts, n, _, _, kept, _, same in rows}
    expected = [(at_once, drafts, n) for at_once in "12" for drafts, n in
                (("plain", "-"), ("assistant, never kept", "2"), ("assistant, always kept", "2"),
                 ("assistant, never kept", "3"), ("assistant, always kept", "3"), ("prompt lookup", "2"))]
    assert list(cases) == expected
    for case, (kept, same) in cases.items():
        assert same == "2/2"
        if case[1].startswith("assistant"):
            assert kept == ("100%" if case[1].endswith("always kept") else "0%")


def test_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_serve_assisted.main(["--model", str(tmp_path), "--assistant", str(tmp_path)])
    assert exit_.value.code == 2
    assert "no checkpoint there" in capsys.readouterr().err
