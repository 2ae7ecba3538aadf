"""gpt_fast::flash_attention_train and gpt_fast::flash_attention_backward: causal attention on the packed c_attn output
for training, with dropout on the probabilities inside the kernel, and its FlashAttention-2 backward.

flash_attention_train(qkv (B, T, 3C), key_padding_mask (B, T) or None, n_head, dropout_p, seed)
    -> (out (B, T, C), lse (B, H, T) float32: each row's log-sum-exp in base 2, log2 sum_j exp(s_ij))
flash_attention_backward(grad_out, qkv, out, lse, key_padding_mask, n_head, dropout_p, seed) -> grad_qkv (B, T, 3C)

The dropout mask is csrc/philox.h's (gpt_fast/ops/philox.py in PyTorch) on the logical tensor of probabilities
(B, H, T, T): the backward regenerates the forward's mask from the same seed. The op's autograd runs the backward
kernel; the eager reference's autograd serves double backward (create_graph) and inputs no kernel serves.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from gpt_fast.ops import philox, reference
from gpt_fast.ops._autograd import kernel_serves, register_backward
from gpt_fast.ops._library import extension_loaded
from gpt_fast.ops.func_transforms import transforms_active


def _backward(grad_outputs, inputs, needs_input_grad, outputs):
    """grad_qkv through flash_attention_backward (register_backward's kernel_backward); None where no kernel serves
    qkv. grad_outputs: (grad_out,), the grad of out alone (lse is not differentiable); outputs: (out, lse)."""
    qkv, key_padding_mask, n_head, dropout_p, seed = inputs
    if not kernel_serves("flash_attention_backward", qkv):
        return None
    (grad_out,), (out, lse) = grad_outputs, outputs
    grad_qkv = torch.ops.gpt_fast.flash_attention_backward(grad_out, qkv, out, lse, key_padding_mask, n_head,
                                                             dropout_p, seed)
    return grad_qkv, None, None, None, None


def _check_args(qkv, n_head, dropout_p, name):
    torch._check(qkv.dim() == 3, lambda: f"{name}: qkv must have 3 dimensions")
    C3 = qkv.shape[2]
    torch._check(C3 % 3 == 0, lambda: f"{name}: qkv's last dimension must be 3 * C")
    torch._check(0 < n_head <= C3 // 3 and (C3 // 3) % n_head == 0,
                 lambda: f"{name}: n_head must divide C = {C3 // 3} (head_dim >= 1), got {n_head}")
    torch._check(0.0 <= dropout_p < 1.0, lambda: f"{name}: dropout_p must lie in [0, 1), got {dropout_p}")


if extension_loaded():

    @torch.library.register_fake("gpt_fast::flash_attention_train")
    def _(qkv, key_padding_mask, n_head, dropout_p, seed):
        _check_args(qkv, n_head, dropout_p, "flash_attention_train")
        B, T, C3 = qkv.shape
        return qkv.new_empty((B, T, C3 // 3)), qkv.new_empty((B, n_head, T), dtype=torch.float32)

    @torch.library.register_fake("gpt_fast::flash_attention_backward")
    def _(grad_out, qkv, out, lse, key_padding_mask, n_head, dropout_p, seed):
        _check_args(qkv, n_head, dropout_p, "flash_attention_backward")
        B, T, C3 = qkv.shape
        torch._check(grad_out.shape == out.shape == (B, T, C3 // 3),
                     lambda: "flash_attention_backward: grad_out and out must be (B, T, C)")
        torch._check(lse.shape == (B, n_head, T) and lse.dtype == torch.float32,
                     lambda: "flash_attention_backward: lse must be float32 (B, n_head, T)")
        return torch.empty_like(qkv, memory_format=torch.contiguous_format)

    register_backward("flash_attention_train", reference.flash_attention_train, _backward, differentiable_outputs=(0,))

    # torch.utils.flop_counter counts the ops as SDPA's formulas do (model FLOPs, the full T x T products: 2 matmuls
    # forward, 4 backward; the backward kernel's recomputation of Q K^T is not counted), so that a training step's
    # count is the same whichever attention backend ran (tests/test_training_flops.py).
    @register_flop_formula(torch.ops.gpt_fast.flash_attention_train)
    def _(qkv_shape, key_padding_mask_shape, n_head, dropout_p, seed, out_shape=None, **kwargs) -> int:
        B, T, C3 = qkv_shape
        return 4 * B * T * T * (C3 // 3)  # Q K^T and P V: 2 B H T T D each

    @register_flop_formula(torch.ops.gpt_fast.flash_attention_backward)
    def _(grad_out_shape, qkv_shape, out_shape_, lse_shape, key_padding_mask_shape, n_head, dropout_p, seed,
          out_shape=None, **kwargs) -> int:
        B, T, C3 = qkv_shape
        return 8 * B * T * T * (C3 // 3)  # dV, dP, dQ, dK


def flash_attention_train(qkv, key_padding_mask, n_head: int, dropout_p: float = 0.0, seed: int | None = None):
    """(out (B, T, C), lse (B, H, T) float32) of causal attention with dropout on the probabilities; seed drawn from
    torch's generator when None (gpt_fast.ops.philox.draw_seed: reproducible under torch.manual_seed)."""
    if seed is None:
        seed = philox.draw_seed()
    if transforms_active():  # torch.func transforms, forward-mode AD: the eager reference (func_transforms.py)
        return reference.flash_attention_train(qkv, key_padding_mask, n_head, float(dropout_p), seed)
    return torch.ops.gpt_fast.flash_attention_train(qkv, key_padding_mask, n_head, float(dropout_p), seed)


def flash_attention_backward(grad_out, qkv, out, lse, key_padding_mask, n_head: int, dropout_p: float, seed: int):
    """grad_qkv (B, T, 3C) in qkv's dtype (float64 too, on the CPU)."""
    return torch.ops.gpt_fast.flash_attention_backward(grad_out, qkv, out, lse, key_padding_mask, n_head,
                                                       float(dropout_p), seed)
