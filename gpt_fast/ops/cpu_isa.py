"""The CPU instruction-set level, as csrc/cpu/cpu_isa.h sees it, for the choices made in Python.

Levels, in increasing order (each includes the ones below): scalar, avx2 (AVX2 + FMA + F16C), avx512 (F/BW/VL/DQ),
avx512_bf16 (+ vdpbf16ps), amx (+ AMX-TILE/AMX-BF16). The environment variable GPT_FAST_CPU_ISA caps the level for
the C++ kernels and for the library paths chosen here (oneDNN's bf16 GEMM needs avx512; half_gemm_fast), so one
machine can run every path below its own. Read on every call, like the C++ side, so tests can switch it in one
process.
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


def cpuinfo_field(field: str, text: str | None = None) -> str | None:
    """The first value of `field` in /proc/cpuinfo (or in `text`, its contents), None where it is absent."""
    try:
        lines = text.splitlines() if text is not None else open("/proc/cpuinfo").read().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == field:
            return value.strip()
    return None


# What the machine and PyTorch's build are, read once at import: a kernel plan made inside a compiled forward
# (gpt_fast/ops/kernel_plan.py) reads them as constants, where dynamo could not trace reading /proc/cpuinfo, or
# torch.backends' and torch.ops.mkldnn's queries (a graph break; a fullgraph compile fails).
DETECTED = _detect()
VENDOR = cpuinfo_field("vendor_id") or platform.processor() or "unknown"
ONEDNN = torch.backends.mkldnn.is_available()
ONEDNN_HALF = {torch.bfloat16: ONEDNN and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
               torch.float16: ONEDNN and bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())}


def cpu_vendor() -> str:
    """"AuthenticAMD", "GenuineIntel", ..."""
    return VENDOR


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


def half_gemm_fast(dtype: torch.dtype) -> bool:
    """Whether PyTorch's own CPU GEMM in bf16 / fp16 runs a fast kernel here: oneDNN's, where torch.ops.mkldnn says
    this CPU supports the dtype (bf16: AVX-512 BW/VL/DQ or AVX-NE-CONVERT; fp16: AVX512-FP16 or AMX-FP16) and, on
    x86, GPT_FAST_CPU_ISA leaves at least avx512. Elsewhere PyTorch runs a reference loop, ~100x slower than the
    float32 GEMM (AMD EPYC Zen 4, 2 threads, (512, 768) @ (768, 3072): fp16 2178 ms against float32's 17 ms; bf16
    with oneDNN capped to AVX2 2404 ms against 26 ms). True for any other dtype."""
    if dtype not in (torch.bfloat16, torch.float16):
        return True
    if DETECTED != "scalar" and not at_least("avx512"):  # an x86 CPU capped (or built) below AVX-512
        return False
    return ONEDNN_HALF[dtype]
