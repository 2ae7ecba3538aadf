"""Keeping freed memory in the process on Linux with glibc, so that CPU training does not fault its pages in again
every step.

glibc's malloc serves each block over its mmap threshold (which grows with use up to 32 MiB on 64-bit Linux) with
a fresh mmap and unmaps it when it is freed, and hands the top of its heap back to the kernel once more than the
trim threshold is free there. A CPU training step of GPT-1 allocates and frees many such blocks (the tied
embedding's gradients and the LM head's bfloat16 copy, 62-124 MB each; transformers' logits), so the kernel maps and
zeroes them again every step: with gpt_fast at B=4, T=256 in bf16 autocast on 2 cores of an AMD Zen 4, ~380,000
minor page faults (1.5 GB) and ~1 s of kernel time a step.

keep_freed_memory() sets glibc's M_MMAP_MAX to 0 (every block from the heap) and M_TRIM_THRESHOLD to its largest
value (the heap is never trimmed), so that freed blocks stay mapped and the next step reuses them. The price is a
higher peak RSS: freed blocks are not returned and the heap can fragment. It is process-wide and stays set.
`gpt-fast train` and gpt_fast.training.train call it on the CPU unless told otherwise (TrainingConfig
.keep_freed_memory); a script of one's own calls it, or sets glibc's variables MALLOC_MMAP_MAX_=0 and
MALLOC_TRIM_THRESHOLD_=2147483647 before Python starts. Written with ctypes: mallopt is the C library's own
interface and no Python package wraps it; an allocator through LD_PRELOAD (jemalloc, tcmalloc) does the same
outside Python.
"""

from __future__ import annotations

import ctypes
import sys

# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def _glibc():
    """The process's C library when it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # glibc only (musl's mallopt does nothing)


def keep_freed_memory() -> bool:
    """Keeps freed memory in this process from now on (see the module's text). Returns whether it took effect:
    False, and nothing changed, where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))


def release_freed_memory() -> bool:
    """Hands the freed memory glibc holds back to the system now (malloc_trim(0)), kept or not; benchmarks call it
    before measuring a step's peak memory so that what the warm-up left freed does not count as in use. Returns
    False, doing nothing, where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    libc.malloc_trim(0)  # returns whether it released anything: nothing to release is no failure
    return True


def wants_kept_memory(keep: bool | None, device_type: str, saves_memory: bool) -> bool:
    """The choice of TrainingConfig.keep_freed_memory: True or False as given; None (automatic) keeps it on the
    CPU unless the run trades speed for memory (gradient checkpointing, the optimizer step in backward)."""
    if keep is not None:
        return keep
    return device_type == "cpu" and not saves_memory
