"""gpt_fast::dequantize_linear_weight (CPU) and its PyTorch fallback: the cases the shared samples
(tests/op_samples.py, run on every tier by tests/test_op_matrix.py) do not cover: non-contiguous inputs, the
fallback's bits against the reference, torch.compile, and bad input (one case per test, a clear error naming the op).
"""

import pytest
import torch

from gpt_fast import ops
from gpt_fast.ops import reference
from gpt_fast.ops.dequantize_linear_weight import dequantize_linear_weight, pytorch_dequantize

pytestmark = pytest.mark.skipif(not ops.has_kernel("dequantize_linear_weight", "cpu"), reason="extension not built")
OP = "gpt_fast::dequantize_linear_weight"
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def quantized(N=40, K=64, bits=4, G=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(N, K, generator=g)
    weight[1] = 0.5  # a constant row: int4 groups with scale 0
    return reference.quantize_linear_weight(weight, bits, G or None)


@pytest.mark.parametrize("bits, G", [(8, 0), (4, 32), (4, 6)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pytorch_fallback_is_bit_identical_to_the_reference(bits, G, dtype):
    q, s, z = quantized(bits=bits, G=G, K=96)
    expected = reference.dequantize_linear_weight(q, s, z, bits, G or None, dtype)
    assert torch.equal(pytorch_dequantize(q, s, z, bits, G or None, dtype), expected)
    assert torch.equal(dequantize_linear_weight(q, s, z, bits, G or None, dtype), expected)


@pytest.mark.parametrize("bits, G", [(8, 0), (4, 32)])
def test_non_contiguous_inputs(bits, G, cpu_tier):
    q, s, z = quantized(bits=bits, G=G)
    strided = lambda t: None if t is None else t.t().contiguous().t()  # noqa: E731  same values, column-major
    expected = reference.dequantize_linear_weight(q, s, z, bits, G or None, torch.bfloat16)
    out = ops.dequantize_linear_weight(strided(q), strided(s), strided(z), bits, G, torch.bfloat16)
    assert out.is_contiguous() and torch.equal(out, expected)


def test_under_torch_compile():
    q, s, z = quantized()
    fn = torch.compile(lambda q, s, z: ops.dequantize_linear_weight(q, s, z, 4, 32, torch.bfloat16) * 2,
                       fullgraph=True, backend="eager")
    assert torch.equal(fn(q, s, z), reference.dequantize_linear_weight(q, s, z, 4, 32, torch.bfloat16) * 2)


def bad(bits=4, G=32, dtype=torch.bfloat16, **change):
    q, s, z = quantized(bits=8 if bits == 8 else 4, G=32 if bits != 8 else 0)
    args = {"qweight": q, "scales": s, "zeros": z, "bits": bits, "group_size": G, "dtype": dtype, **change}
    return torch.ops.gpt_fast.dequantize_linear_weight(*args.values())


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.complex64, torch.float8_e4m3fn])
def test_dtype_must_be_a_float_type_the_op_writes(dtype):
    with pytest.raises(ValueError, match=f"{OP}: dtype must be float32, bfloat16, float16 or float64"):
        bad(dtype=dtype)


def test_bits_must_be_4_or_8():
    with pytest.raises(ValueError, match=f"{OP}: bits must be 4 or 8, got 3"):
        bad(bits=3)


def test_group_size_must_divide_k():
    with pytest.raises(ValueError, match=f"{OP}: bits=4 needs an even positive group_size dividing in_features K=64"):
        bad(G=24)


def test_int8_takes_no_zeros():
    q, s, _ = quantized(bits=8, G=0)
    with pytest.raises(ValueError, match=f"{OP}: bits=8 is symmetric: zeros must be None"):
        bad(bits=8, G=0, qweight=q, scales=s, zeros=torch.zeros(40, 1))


def test_int4_scales_must_be_bfloat16():
    with pytest.raises(ValueError, match=f"{OP}: bits=4 needs bfloat16 scales of shape"):
        bad(scales=torch.ones(40, 2))


def test_int4_needs_zeros():
    with pytest.raises(ValueError, match=f"{OP}: bits=4 needs zeros"):
        bad(zeros=None)


def test_qweight_must_be_2d_and_non_empty():
    with pytest.raises(ValueError, match=f"{OP}: qweight must be non-empty"):
        bad(qweight=torch.zeros(0, 32, dtype=torch.uint8), scales=torch.ones(0, 2, dtype=torch.bfloat16),
            zeros=torch.ones(0, 2, dtype=torch.bfloat16))
    with pytest.raises((ValueError, RuntimeError), match=f"{OP}: qweight must have 2 dimensions"):
        bad(qweight=torch.zeros(40, 32, 1, dtype=torch.uint8))
