"""Loads the compiled extension gpt_fast._C once and answers which kernels it holds.

When the extension is missing or fails to load, gpt_fast still works on its SDPA and eager paths; a single
warning says why. Nothing here is mutable after import.
"""

from __future__ import annotations

import functools
import warnings

import torch


@functools.lru_cache(maxsize=None)
def load_error() -> str | None:
    """None when gpt_fast._C is loaded, else the reason it is not."""
    try:
        from gpt_fast import _C  # noqa: F401  (importing registers torch.ops.gpt_fast.*)
    except (ImportError, OSError) as error:
        message = f"gpt_fast: the compiled extension gpt_fast._C is unavailable ({error}); using PyTorch paths only."
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return str(error)
    return None


def extension_loaded() -> bool:
    return load_error() is None


@functools.lru_cache(maxsize=None)
def has_kernel(op_name: str, device_type: str) -> bool:
    """True when torch.ops.gpt_fast.<op_name> has a kernel for the device type ("cpu", "cuda")."""
    if not extension_loaded():
        return False
    qualified = f"gpt_fast::{op_name}"
    if not torch._C._dispatch_has_kernel(qualified):
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(qualified, key)
