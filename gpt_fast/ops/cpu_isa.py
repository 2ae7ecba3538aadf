"""The CPU instruction-set level, as csrc/cpu/cpu_isa.h sees it, for the choices made in Python.

Levels, in increasing order (each includes the ones below): scalar, avx2 (AVX2 + FMA + F16C), avx512 (F/BW/VL/DQ),
avx512_bf16 (+ vdpbf16ps), amx (+ AMX-TILE/AMX-BF16). The environment variable GPT_FAST_CPU_ISA caps the level for
the C++ kernels and for the library paths chosen here (oneDNN's bf16 GEMM needs avx512), so one machine can run
every path below its own. Read on every call, like the C++ side, so tests can switch it in one process.
"""

from __future__ import annotations

import os
import platform

import torch

LEVELS = ("scalar", "avx2", "avx512", "avx512_bf16", "amx")
ALIASES = {"portable": "scalar"}
ENV = "GPT_FAST_CPU_ISA"


def _detect() -> str:
    """The highest level this CPU has (torch's own detection, which the C++ kernels agree with)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "scalar"
    cpu = torch.cpu
    if not cpu._is_avx2_supported():
        return "scalar"
    if not cpu._is_avx512_supported():
        return "avx2"
    if not cpu._is_avx512_bf16_supported():
        return "avx512"
    return "amx" if cpu._is_amx_tile_supported() else "avx512_bf16"


DETECTED = _detect()  # fixed at import, so torch.compile reads it as a constant


def detected_level() -> str:
    return DETECTED


def cap() -> str | None:
    """GPT_FAST_CPU_ISA's level, or None when unset."""
    value = os.environ.get(ENV, "")
    if not value:
        return None
    value = ALIASES.get(value, value)
    if value not in LEVELS:
        raise ValueError(f"{ENV} must be one of {LEVELS} (or 'portable'), got {os.environ[ENV]!r}")
    return value


def level() -> str:
    """The level the kernels use: what the CPU has, capped by GPT_FAST_CPU_ISA."""
    detected, limit = detected_level(), cap()
    return detected if limit is None else LEVELS[min(LEVELS.index(detected), LEVELS.index(limit))]


def at_least(name: str) -> bool:
    return LEVELS.index(level()) >= LEVELS.index(name)
