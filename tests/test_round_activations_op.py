"""gpt_fast::round_activations (CPU): the cases the shared samples (tests/op_samples.py, run on every tier by
tests/test_op_matrix.py) do not cover: its input left as it is, strided and float64 inputs, torch.compile, and bad
input (one case per test, a clear error naming the op)."""

import pytest
import torch

from gpt_fast import ops
from gpt_fast.ops import reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("round_activations", "cpu"), reason="extension not built")
OP = "gpt_fast::round_activations"


def test_float32_input_is_left_as_it_is():
    x = torch.randn(4, 64)
    before = x.clone()
    out = ops.round_activations(x, 32)
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
    assert torch.equal(out, reference.round_activations(x, 32))


@pytest.mark.parametrize("make", [lambda x: x.t().contiguous().t(), lambda x: x[:, ::2], lambda x: x.double()],
                         ids=["column-major", "every-other-column", "float64"])
def test_strided_and_float64_inputs(make):
    x = make(torch.randn(6, 128) * 5)
    assert torch.equal(ops.round_activations(x, 32), reference.round_activations(x, 32))


def test_under_torch_compile():
    x = torch.randn(3, 96)
    fn = torch.compile(lambda x: ops.round_activations(x, 32) + 1, fullgraph=True, backend="eager")
    assert torch.equal(fn(x), reference.round_activations(x, 32) + 1)


@pytest.mark.parametrize("group_size", [0, -32, 48])
def test_group_size_must_divide_k(group_size):
    with pytest.raises(ValueError, match=f"{OP}: group_size must be positive and divide x's last dimension K=64"):
        torch.ops.gpt_fast.round_activations(torch.randn(2, 64), group_size)


def test_x_must_be_floating_point():
    with pytest.raises(RuntimeError, match=f"{OP}: x must be float32, bfloat16, float16 or float64, got Int"):
        torch.ops.gpt_fast.round_activations(torch.ones(2, 64, dtype=torch.int32), 32)


def test_x_must_not_be_a_scalar():
    with pytest.raises(ValueError, match=f"{OP}: x must have at least one dimension"):
        torch.ops.gpt_fast.round_activations(torch.tensor(1.0), 1)
