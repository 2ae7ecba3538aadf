"""gpt_fast/cli/machine.py's readings of this process: glibc's heap (malloc_heap), checked against an allocation of
a known size."""

from __future__ import annotations

import pytest
import torch

from gpt_fast.cli.machine import malloc_heap


def test_malloc_heap_sees_a_64_mib_tensor_and_its_release():
    before = malloc_heap()
    if before is None:
        pytest.skip("no glibc >= 2.33 mallinfo2 here")
    assert set(before) == {"held", "in_use", "free", "mmapped"} and all(v >= 0 for v in before.values())
    assert before["in_use"] + before["free"] <= before["held"]
    x = torch.ones(16 * 2**20)  # 64 MiB through malloc (a large block: mmapped, or from a heap)
    during = malloc_heap()
    grown = (during["in_use"] + during["mmapped"]) - (before["in_use"] + before["mmapped"])
    assert 64 * 2**20 <= grown < 80 * 2**20
    del x
    after = malloc_heap()
    assert (after["in_use"] + after["mmapped"]) - (before["in_use"] + before["mmapped"]) < 16 * 2**20
