"""benchmarks/bench_train_step.py --quick end to end (a small model, one round): every configuration timed and
measured in its own child process (and timed there too, --own-process), ratios against transformers' model in the
JSON. No figure is judged."""

import json
import sys

import pytest
from training_helpers import ROOT, run_process_group

from gpt_fast.training import allocator

BENCH = ROOT / "benchmarks" / "bench_train_step.py"


@pytest.mark.slow
def test_quick_run_writes_every_configuration(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "report.json"
    done = run_process_group([sys.executable, str(BENCH), "--quick", "--rounds", "1", "--threads", "1", "--out",
                              str(out), "--keep-freed-memory", "--own-process", "2"], timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["results"]]
    # 3 per precision, + 3 with checkpointing (gpt_fast only; one with the optimizer in backward)
    assert len(names) == len(set(names)) == 12
    assert {r["impl"] for r in report["results"]} == {"gpt_fast", "transformers"}
    for r in report["results"]:
        # The quick model is so small that a step can run entirely in memory freed by the step before: growth 0.
        assert r["tokens_per_s"] > 0 and r["step_growth_bytes"] >= 0 and r["peak_rss_bytes"] > r["step_growth_bytes"]
        assert len(r["own_process_seconds"]) == 2 and r["own_process_tokens_per_s"] > 0
        if r["impl"] == "transformers":
            assert r["speed_vs_transformers"] == 1.0 and r["own_process_speed_vs_transformers"] == 1.0
            assert r["memory_vs_transformers"] == (1.0 if r["step_growth_bytes"] > 0 else None)
    assert len(report["loadavg_before"]) == 3 and report["quick"] is True and report["own_process_steps"] == 2
    assert "own process: vs transformers |" in done.stdout
    assert report["freed_memory"] == ("kept" if allocator._glibc() is not None else "glibc's default")
    assert "timed with freed memory kept" in done.stdout or allocator._glibc() is None
    assert "| gpt_fast fused loss, bf16, checkpointing |" in done.stdout
    assert "| gpt_fast fused loss, bf16, checkpointing, optimizer in backward |" in done.stdout


def test_bad_arguments_are_refused(tmp_path):
    done = run_process_group([sys.executable, str(BENCH), "--quick", "--rounds", "0", "--out",
                              str(tmp_path / "x.json")], timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "--threads and --rounds must be positive" in done.stderr
    done = run_process_group([sys.executable, str(BENCH), "--quick", "--own-process", "-1", "--out",
                              str(tmp_path / "x.json")], timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "--own-process must be 0 or more" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_memory_ratio_without_baseline_growth():
    """A baseline step that grew the RSS by nothing gives no ratio (this once crashed the run: division by zero)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_train_step
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert bench_train_step.ratio(0, 0) is None and bench_train_step.ratio(5, 0) is None
    assert bench_train_step.ratio(3, 2) == 1.5
    assert bench_train_step.format_ratio(None).startswith("n/a")
