"""The accuracy criterion itself (tests/accuracy.py): a wrong output fails even where the reference or PyTorch's
own same-dtype result holds an inf or NaN, which used to make the allowed error infinite."""

import math

import pytest
import torch
from accuracy import assert_within_pytorch_error

INF, NAN = math.inf, math.nan


def t(*values, dtype=torch.float16):
    return torch.tensor(values, dtype=dtype)


def test_correct_output_passes():
    reference = t(1.0, 2.0, 3.0, dtype=torch.float32)
    assert_within_pytorch_error(t(1.0, 2.0, 3.0), reference, t(1.0, 2.0, 3.0))


def test_wrong_output_fails_when_pytorch_overflowed():
    """PyTorch's own fp16 result overflowed to inf at one position: its error there is infinite, but that must not
    let a wrong value elsewhere (100 for 1) pass."""
    reference = t(1.0, 2.0, 3.0, dtype=torch.float32)
    with pytest.raises(AssertionError, match="PyTorch's own error"):
        assert_within_pytorch_error(t(100.0, 2.0, 3.0), reference, t(1.0, 2.0, INF))


def test_kernel_may_beat_pytorch_where_pytorch_overflowed():
    reference = t(1.0, 2.0, 3.0, dtype=torch.float32)
    assert_within_pytorch_error(t(1.0, 2.0, 3.0), reference, t(1.0, 2.0, INF))


def test_wrong_output_fails_beside_an_inf_reference():
    reference = t(1.0, INF, dtype=torch.float32)
    with pytest.raises(AssertionError):
        assert_within_pytorch_error(t(7.0, INF), reference, t(1.0, INF))


@pytest.mark.parametrize("actual", [t(1.0, NAN, 3.0), t(1.0, -INF, 3.0), t(1.0, 5.0, 3.0), t(INF, INF, 3.0)],
                         ids=["nan_for_inf", "inf_of_other_sign", "finite_for_inf", "extra_inf"])
def test_non_finite_pattern_must_match(actual):
    reference = t(1.0, INF, 3.0, dtype=torch.float32)
    with pytest.raises(AssertionError, match="non-finite values differ"):
        assert_within_pytorch_error(actual, reference, t(1.0, INF, 3.0))


def test_nan_must_match_nan():
    reference = t(NAN, 2.0, dtype=torch.float32)
    assert_within_pytorch_error(t(NAN, 2.0), reference, t(NAN, 2.0))
    with pytest.raises(AssertionError, match="non-finite values differ"):
        assert_within_pytorch_error(t(0.0, 2.0), reference, t(NAN, 2.0))


def test_reference_beyond_the_dtype_range_must_be_inf():
    """70000 is finite in float32 but rounds to inf in float16: an exact fp16 kernel gives inf there."""
    reference = t(70000.0, 1.0, dtype=torch.float32)
    assert_within_pytorch_error(t(INF, 1.0), reference, t(INF, 1.0))
    with pytest.raises(AssertionError, match="non-finite values differ"):
        assert_within_pytorch_error(t(65504.0, 1.0), reference, t(INF, 1.0))
