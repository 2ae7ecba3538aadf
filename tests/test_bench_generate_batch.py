"""benchmarks/bench_generate_batch.py end to end on a tiny model: its checks (generate_batch's tokens are
generate()'s per prompt; transformers' generate_batch ran every request) and a row per method. No figure is judged."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_generate_batch  # noqa: E402


def test_tiny_run_checks_and_has_a_row_per_method(capsys):
    pytest.importorskip("transformers")
    bench_generate_batch.main(["--tiny", "--prompts", "3", "--new-tokens", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "transformers' generate_batch agrees with gpt_fast's on 12 of 12 tokens" in out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["gpt_fast generate_batch", "gpt_fast generate, one by one", "gpt_fast generate, padded batch",
                        "transformers generate_batch"]
    assert "3 prompts of" in out and "kernel tier" in out
