"""Every code path of the CPU attention kernels, not only the best one this CPU has.

GPT_FAST_CPU_ISA caps the path the kernels pick (portable vectors, AVX2, AVX-512; the best path, AMX where the CPU
has it, is what the other test files run); each level reruns a covering subset of the flash_attention and
decode_attention accuracy tests in a fresh process, since the choice is made once per process. On a CPU without a
level, the kernels fall back to the best lower one.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt_fast import ops

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


@pytest.mark.parametrize("level", ["portable", "avx2", "avx512"])
def test_code_path(level):
    env = dict(os.environ, GPT_FAST_CPU_ISA=level, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=TESTS, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
