"""One torch.compile (inductor) cache folder per ATen CPU capability for the test run.

PyTorch 2.14's inductor cache does not key its entries on the vector width it generated code for: a kernel made
while ATEN_CPU_CAPABILITY=avx2 (8 floats a vector; docs/kernels.md's emulated AVX2 CPU) and found again without it (16
floats on an AVX-512 CPU) writes 16 floats where it stepped by 8, past its buffers (heap corruption), and the other
way round leaves half of every tile unwritten (NaN or stale numbers). The tests run under several capabilities on one
machine, so each gets its own folder below inductor's default one, unless TORCHINDUCTOR_CACHE_DIR is set already.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def cache_dir_for(capability: str, base: str | os.PathLike | None = None) -> Path:
    """The folder for one capability ("AVX512", "AVX2", "DEFAULT", ...) below base (default: inductor's own)."""
    if base is None:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        base = default_cache_dir()
    return Path(base) / "gpt_fast_tests" / capability.lower()


def isolate_inductor_cache(base: str | os.PathLike | None = None) -> str:
    """Points TORCHINDUCTOR_CACHE_DIR at this process's capability folder unless it is set; returns the folder in
    use. Call before anything is compiled (inductor reads the variable when it first needs the folder)."""
    if CACHE_ENV not in os.environ:
        import torch

        os.environ[CACHE_ENV] = str(cache_dir_for(torch.backends.cpu.get_cpu_capability(), base))
    return os.environ[CACHE_ENV]
