"""Every code path of the CPU attention kernels, not only the best one this CPU has.

GPT_FAST_CPU_ISA (csrc/cpu/cpu_isa.h) caps the path the kernels pick: scalar (portable vectors), avx2, avx512; the
best path, AMX where the CPU has it, is what the other test files run. Each level reruns a covering subset of the
flash_attention and decode_attention accuracy tests in a fresh process (so that a failure cannot leak the setting
into other tests). On a CPU without a level, the kernels fall back to the best lower one.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt_fast import ops
from gpt_fast.ops import reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("flash_attention", "cpu"), reason="extension not built")

TESTS = Path(__file__).resolve().parent
SCRIPT = """
import torch
import test_flash_attention_op as f, test_decode_attention_op as d
for case in f.CASES:
    if case[1] <= 97 or case[1] == 513 and case[0] == 3:
        f.test_matches_reference(*case)
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    f.test_fully_padded_rows_give_zeros(dtype)
f.test_non_contiguous_qkv(torch.bfloat16, 64)
f.test_head_size_128_and_odd()
for case in d.CASES:
    d.test_matches_reference(*case)
d.test_split_keys_merge(2)
d.test_non_contiguous_inputs()
print("all checks passed")
"""


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512"])
def test_code_path(level):
    env = dict(os.environ, GPT_FAST_CPU_ISA=level, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=TESTS, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


def _attention_args():
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 5, 3 * 2 * 16, generator=g)  # (B, T, 3C), H = 2, D = 16
    cache = torch.zeros(2, 2, 8, 16)  # (B, H, Tmax, D)
    return qkv, cache


@pytest.mark.parametrize("level", ["portable", "avx512_bf16", "amx"])
def test_every_level_name_is_accepted(level, monkeypatch):
    # One set of names for every CPU kernel: "portable" is another name for "scalar"; levels the attention kernels
    # have no separate path for (avx512_bf16) run the best lower one. The linear family accepts the same names.
    qkv, cache = _attention_args()
    want = reference.flash_attention(qkv, None, 2)
    monkeypatch.setenv("GPT_FAST_CPU_ISA", level)
    torch.testing.assert_close(ops.flash_attention(qkv, None, 2), want)
    out = ops.decode_attention(qkv, cache, cache.clone(), torch.tensor([0, 3]), 2)
    torch.testing.assert_close(out[0], want[0])


def test_rejects_unknown_level(monkeypatch):
    qkv, _ = _attention_args()
    monkeypatch.setenv("GPT_FAST_CPU_ISA", "sse2")
    with pytest.raises(RuntimeError, match="GPT_FAST_CPU_ISA must be scalar \\(or portable\\), avx2, avx512"):
        ops.flash_attention(qkv, None, 2)
