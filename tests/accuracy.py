"""The accuracy criterion every kernel test uses.

A kernel's error against the reference (run on float32 copies of low-precision inputs, float64 copies of float32
inputs) is bounded by a small multiple of the error PyTorch's own
implementation makes in the same dtype, plus one unit in the last place of the output's largest magnitude,
instead of a hand-picked tolerance.

Non-finite values are handled apart, so that an inf or NaN can never widen the tolerance: where the reference,
rounded to the output dtype, is inf or NaN the kernel must give exactly that (same NaN / +-inf pattern); everywhere
else the kernel must be finite and within the tolerance, which is computed over finite values only (PyTorch's own
error over the positions where both the reference and PyTorch's result are finite).
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


def pytorch_one_thread(fn, *args):
    """fn(*args) with PyTorch on one thread: its BLAS splits the sums of a matmul by thread, so its own error (the
    yardstick of assert_within_pytorch_error) would otherwise depend on how many threads the test run has (a GEMV
    of K = 768 split over 2 threads erred only 1.9e-8 on its 5 outputs, and failed a kernel that is within the rule
    of the one-thread sum)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def max_abs_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    return (actual.double() - reference.double()).abs().max().item() if actual.numel() else 0.0


def assert_same_non_finite(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """actual is non-finite exactly where expected is, with the same values there (NaN for NaN, +-inf for +-inf)."""
    bad = (actual.isnan() != expected.isnan()) | (actual.isinf() != expected.isinf())
    bad |= expected.isinf() & (actual != expected)  # inf of the other sign
    assert not bad.any(), (f"non-finite values differ at {bad.nonzero().tolist()[:8]}: "
                           f"actual {actual[bad].tolist()[:8]}, expected {expected[bad].tolist()[:8]}")


def assert_within_pytorch_error(actual, reference_upcast, pytorch_same_dtype, multiple: float = ERROR_MULTIPLE):
    """actual: the kernel's output; reference_upcast: the reference run on upcast copies of the inputs (see upcast);
    pytorch_same_dtype: PyTorch's own path run in the kernel's dtype on the same inputs."""
    assert actual.shape == reference_upcast.shape, (actual.shape, reference_upcast.shape)
    dtype, reference = actual.dtype, reference_upcast.double()
    # What an exact kernel would output: values beyond the dtype's range round to inf, and then must be inf.
    rounded = reference_upcast.to(dtype).double()
    finite = rounded.isfinite()
    assert_same_non_finite(actual.double(), torch.where(finite, 0.0, rounded))
    actual, reference, pytorch = actual.double()[finite], reference[finite], pytorch_same_dtype.double()[finite]
    trusted = pytorch.isfinite()  # an inf or NaN of PyTorch's own would make its error, and the tolerance, infinite
    pytorch_error = max_abs_error(pytorch[trusted], reference[trusted])
    one_ulp = torch.finfo(dtype).eps * (reference.abs().max().item() if reference.numel() else 0.0)
    torch.testing.assert_close(
        actual, reference, rtol=0.0, atol=multiple * pytorch_error + one_ulp,
        msg=lambda m: f"{m}\n(PyTorch's own error in {dtype}: {pytorch_error:.3g} over its "
                      f"{int(trusted.sum())} finite values; allowed {multiple}x that)",
    )
