"""Loads the compiled extension gpt_fast._C once, at import, and records which kernels it holds.

When the extension is missing or fails to load, gpt_fast still works on its SDPA and eager paths; a single
warning says why. Both facts are fixed at import, so torch.compile reads them as constants.

GPT_FAST_EXTENSION=/path/to/_C.so loads that build of the extension instead of the one inside the package (the
sanitizer job, .ci/sanitize, points it at its AddressSanitizer build). A library named this way must load: a
failure is an ImportError, not a fallback, so that tests cannot silently skip the build they were meant to run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings

import torch

DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
EXTENSION_ENV = "GPT_FAST_EXTENSION"


def _import_from(path: str) -> None:
    """Imports the shared library at `path` as gpt_fast._C (its init function is PyInit__C either way)."""
    spec = importlib.util.spec_from_file_location("gpt_fast._C", path)
    if spec is None or not os.path.isfile(path):
        raise ImportError(f"{EXTENSION_ENV}={path!r} is not an extension module file")
    module = importlib.util.module_from_spec(spec)  # dlopen + PyInit__C: registers torch.ops.gpt_fast.*
    spec.loader.exec_module(module)
    sys.modules["gpt_fast._C"] = module


def _load() -> str | None:
    path = os.environ.get(EXTENSION_ENV)
    if path:
        _import_from(path)  # errors propagate: this build was asked for by name
        return None
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
