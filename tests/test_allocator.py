"""gpt_fast/training/allocator.py: keeping freed memory mapped (glibc), and when the trainer and `gpt-fast train`
ask for it. The real setting is process-wide, so it is measured in a child process; in this one it is replaced
(tests/conftest.py keeps glibc's defaults for the whole session)."""

import subprocess
import sys

import pytest
from training_helpers import ROOT, tiny_config, write_bin

from gpt_fast.cli import main as cli
from gpt_fast.training import allocator, train

# Minor page faults of allocating and filling a fresh 256 MiB tensor: glibc's default maps it anew each time (65,536
# faults of 4 KiB pages); kept, later ones reuse the heap that the first ones grew.
PROBE = """
import resource, torch
from gpt_fast.training.allocator import keep_freed_memory

def faults_of_a_fresh_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(64 * 2**20, dtype=torch.float32)
    block.fill_(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del block
    return faults

faults_of_a_fresh_block()
default = faults_of_a_fresh_block()
kept = keep_freed_memory()
# The heap grows a few times before a freed block sits where the next one fits (~6 blocks here, Python's own small
# objects landing between them), then every block reuses it.
grown = [faults_of_a_fresh_block() for _ in range(12)]
print(default, int(kept), min(grown[-3:]))
"""
# The RSS (kB) with the kept blocks, then after release_freed_memory().
RELEASE_PROBE = """
import torch
from gpt_fast.training.allocator import keep_freed_memory, release_freed_memory

def rss_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))

keep_freed_memory()
block = torch.ones(64 * 2**20)
del block
kept = rss_kb()
print(kept, int(release_freed_memory()), rss_kb())
"""


def run_probe(source: str) -> list[int]:
    """The integers a probe prints, run in a fresh Python (the setting it tests is process-wide)."""
    out = subprocess.run([sys.executable, "-c", source], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [int(value) for value in out.stdout.split()]


@pytest.mark.skipif(allocator._glibc() is None, reason="the C library is not glibc")
def test_freed_blocks_are_not_faulted_in_again():
    default, kept, faults = run_probe(PROBE)
    if default < 100:
        pytest.skip(f"this kernel maps a fresh 256 MiB block with {default} faults (huge pages): nothing to keep")
    assert kept == 1
    assert faults < default / 20, (default, faults)


@pytest.mark.skipif(allocator._glibc() is None, reason="the C library is not glibc")
def test_release_hands_kept_memory_back():
    kept, released, after = run_probe(RELEASE_PROBE)
    assert released == 1 and kept - after > 200 * 1024, (kept, after)  # most of the 256 MiB block


def test_does_nothing_without_glibc(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator._glibc() is None
    assert allocator.keep_freed_memory() is False and allocator.release_freed_memory() is False


@pytest.mark.parametrize("keep, device, saves_memory, wanted", [
    (None, "cpu", False, True), (None, "cpu", True, False), (None, "cuda", False, False),
    (True, "cuda", True, True), (False, "cpu", False, False)])
def test_the_automatic_choice(keep, device, saves_memory, wanted):
    assert allocator.wants_kept_memory(keep, device, saves_memory) is wanted


@pytest.fixture
def calls(monkeypatch):
    made = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: made.append(1) or True)
    return made


@pytest.mark.parametrize("overrides, kept", [
    ({}, True), (dict(gradient_checkpointing=True), False),
    (dict(optimizer_in_backward=True, max_grad_norm=0.0), False), (dict(keep_freed_memory=False), False),
    (dict(keep_freed_memory=True, gradient_checkpointing=True), True)])
def test_the_trainer_keeps_memory_when_asked(tmp_path, calls, overrides, kept):
    result = train(tiny_config(write_bin(tmp_path / "data.bin"), tmp_path / "out", max_steps=1, **overrides))
    assert result.kept_freed_memory is kept and len(calls) == int(kept)


@pytest.mark.parametrize("flags, wanted", [([], None), (["--keep-freed-memory"], True),
                                           (["--release-freed-memory"], False)])
def test_cli_flags(monkeypatch, tmp_path, flags, wanted):
    seen = []
    monkeypatch.setattr("gpt_fast.cli.train.train", lambda config: seen.append(config) or
                        type("Result", (), {"main_process": False})())
    assert cli(["train", "x.bin", "--out", str(tmp_path), "--config", "gpt1", *flags]) == 0
    assert seen[0].keep_freed_memory is wanted


def test_cli_flags_exclude_each_other(capsys):
    assert cli(["train", "x.bin", "--out", "o", "--config", "gpt1", "--keep-freed-memory",
                "--release-freed-memory"]) == 2
    assert "not allowed with" in capsys.readouterr().err
