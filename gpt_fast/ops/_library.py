"""Loads the compiled extension gpt_fast._C once, at import, and records which kernels it holds.

When the extension is missing or fails to load, gpt_fast still works on its SDPA and eager paths; a single
warning says why. Both facts are fixed at import, so torch.compile reads them as constants.
"""

from __future__ import annotations

import warnings

import torch

DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _load() -> str | None:
    try:
        from gpt_fast import _C  # noqa: F401  (importing registers torch.ops.gpt_fast.*)
    except (ImportError, OSError) as error:
        warnings.warn(f"gpt_fast: the compiled extension gpt_fast._C is unavailable ({error}); "
                      "using PyTorch paths only.", RuntimeWarning, stacklevel=2)
        return str(error)
    return None


def _kernels() -> frozenset[tuple[str, str]]:
    if _LOAD_ERROR is not None:
        return frozenset()
    return frozenset(
        (name.split("::", 1)[1], device_type)
        for device_type, key in DISPATCH_KEYS.items()
        for name in torch._C._dispatch_get_registrations_for_dispatch_key(key)
        if name.startswith("gpt_fast::")
    )


_LOAD_ERROR = _load()
_KERNELS = _kernels()


def load_error() -> str | None:
    """None when gpt_fast._C is loaded, else the reason it is not."""
    return _LOAD_ERROR


def extension_loaded() -> bool:
    return _LOAD_ERROR is None


def has_kernel(op_name: str, device_type: str) -> bool:
    """True when torch.ops.gpt_fast.<op_name> has a compiled kernel for the device type ("cpu", "cuda")."""
    return (op_name, device_type) in _KERNELS
