"""The accuracy criterion every kernel test uses.

A kernel's error against the reference (run on float32 copies of low-precision inputs, float64 copies of float32
inputs) is bounded by a small multiple of the error PyTorch's own
implementation makes in the same dtype, plus one unit in the last place of the output's largest magnitude,
instead of a hand-picked tolerance.
"""

from __future__ import annotations

import torch

ERROR_MULTIPLE = 3.0  # how much worse than PyTorch's own error a kernel may be


def reference_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the oracle runs in for a kernel of this dtype: one step more precise."""
    return torch.float64 if dtype == torch.float32 else torch.float32


def upcast(*tensors, dtype: torch.dtype):
    """Copies of the tensors in reference_dtype(dtype); None stays None."""
    target = reference_dtype(dtype)
    return [None if t is None else (t.to(target) if t.is_floating_point() else t) for t in tensors]


def max_abs_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    return (actual.double() - reference.double()).abs().max().item() if actual.numel() else 0.0


def assert_within_pytorch_error(actual, reference_upcast, pytorch_same_dtype, multiple: float = ERROR_MULTIPLE):
    """actual: the kernel's output; reference_upcast: the reference run on upcast copies of the inputs (see upcast);
    pytorch_same_dtype: PyTorch's own path run in the kernel's dtype on the same inputs."""
    assert actual.shape == reference_upcast.shape, (actual.shape, reference_upcast.shape)
    reference = reference_upcast.double()
    pytorch_error = max_abs_error(pytorch_same_dtype, reference)
    one_ulp = torch.finfo(actual.dtype).eps * (reference.abs().max().item() if reference.numel() else 0.0)
    torch.testing.assert_close(
        actual.double(), reference, rtol=0.0, atol=multiple * pytorch_error + one_ulp,
        msg=lambda m: f"{m}\n(PyTorch's own error in {actual.dtype}: {pytorch_error:.3g}; allowed {multiple}x that)",
    )
