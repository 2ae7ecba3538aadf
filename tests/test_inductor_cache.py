"""tests/inductor_cache.py: code compiled under one ATen CPU capability is never found again under another (PyTorch's
inductor cache does not tell them apart: shown here by running the same compile both ways over one shared folder)."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from inductor_cache import CACHE_ENV, cache_dir_for

HERE = Path(__file__).resolve().parent
# An int64 gather beside float math, compiled, against eager; prints the largest difference.
PROBE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "isolated":
    from inductor_cache import isolate_inductor_cache
    isolate_inductor_cache(sys.argv[3])
def f(x, ids):
    return torch.nn.functional.embedding(ids, x) * 2 + 1
torch.manual_seed(0)
x, ids = torch.randn(100, 72), torch.randint(0, 100, (3, 37))
print((torch.compile(f, fullgraph=True)(x, ids) - f(x, ids)).abs().max().item())
"""


def test_each_capability_has_its_folder():
    assert cache_dir_for("AVX512", "/c") != cache_dir_for("AVX2", "/c")
    assert cache_dir_for("AVX2", "/c") == Path("/c/gpt_fast_tests/avx2")
    if "gpt_fast_tests" in os.environ[CACHE_ENV]:  # set by conftest (not by the person running the tests)
        assert Path(os.environ[CACHE_ENV]) == cache_dir_for(torch.backends.cpu.get_cpu_capability())


def run_probe(mode: str, base: Path, capability: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in (CACHE_ENV, "ATEN_CPU_CAPABILITY")}
    if mode == "shared":
        env[CACHE_ENV] = str(base)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    done = subprocess.run([sys.executable, "-c", PROBE, str(HERE), mode, str(base)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512",
                    reason="needs an AVX-512 CPU (two vector widths to compile for)")
def test_avx2_code_never_reused_on_avx512(tmp_path):
    """One compile on AVX-512, then the same under ATEN_CPU_CAPABILITY=avx2: with isolated folders both are exact;
    pointed at the folder the first compile filled, the second finds its 16-float code and computes garbage (why
    conftest isolates)."""
    with ThreadPoolExecutor(max_workers=2) as pool:  # two independent compiles (each ~14 s on a core) at once
        native = pool.submit(run_probe, "isolated", tmp_path, None)
        avx2 = pool.submit(run_probe, "isolated", tmp_path, "avx2")  # beside the AVX-512 folder, in its own
        assert native.result() == 0.0 and avx2.result() == 0.0
    filled = cache_dir_for(torch.backends.cpu.get_cpu_capability(), tmp_path)
    assert any(filled.iterdir())
    shared = run_probe("shared", filled, "avx2")  # PyTorch's bug: if fixed, this line says so
    assert not shared == 0.0, "inductor's cache now tells the capabilities apart: tests/inductor_cache.py can go"
