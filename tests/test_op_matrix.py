"""Every gpt_fast op on the CPU, on every kernel tier this CPU can execute (scalar, avx2, avx512, avx512_bf16,
amx; the others are skipped with the reason), in fp32 / bf16 / fp16, over the op's sample_inputs
(tests/op_samples.py): the result against the eager reference, and torch.library.opcheck (fake kernel, schema,
autograd registration). The special cases of each op (special values, strides, bad input, gradients) stay in
tests/test_<op>_op.py."""

import pytest
import torch
from op_samples import SAMPLES, check_sample, op_arguments, sample_inputs

from gpt_fast import ops

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
pytestmark = pytest.mark.skipif(not ops.extension_loaded(), reason="no extension was built")
# opcheck's autograd checks need a registered backward; the ops without one are checked without autograd inputs
# backward ops: no autograd of their own (double backward: the reference)
NO_AUTOGRAD = {"decode_attention", "linear_small_m", "pack_linear_weight", "pack_quantized_weight",
               "dequantize_linear_weight", "round_activations", "bias_gelu_backward", "add_layernorm_backward",
               "flash_attention_backward"}


@pytest.mark.parametrize("op", sorted(SAMPLES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_matches_reference_on_every_tier(op, dtype, cpu_tier):
    for sample in sample_inputs(op, dtype):
        try:
            check_sample(op, sample)
        except AssertionError as error:
            raise AssertionError(f"{op} {sample} on the {cpu_tier} tier: {error}") from None


@pytest.mark.parametrize("op", sorted(SAMPLES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_opcheck(op, dtype):
    for sample in sample_inputs(op, dtype)[:3]:
        args = op_arguments(op, sample)
        if op not in NO_AUTOGRAD:
            args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                         for a in args)
        torch.library.opcheck(getattr(torch.ops.gpt_fast, op), args)
