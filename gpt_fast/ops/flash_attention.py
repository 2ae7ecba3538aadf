"""gpt_fast::flash_attention: causal self-attention on the packed c_attn output (B, T, 3C) -> (B, T, C)."""

from __future__ import annotations

import torch

from gpt_fast.ops import reference
from gpt_fast.ops._autograd import register_reference_backward
from gpt_fast.ops._library import extension_loaded
from gpt_fast.ops.func_transforms import transforms_active

if extension_loaded():

    @torch.library.register_fake("gpt_fast::flash_attention")
    def _(qkv, key_padding_mask, n_head):
        torch._check(qkv.dim() == 3, lambda: "flash_attention: qkv must have 3 dimensions")
        B, T, C3 = qkv.shape
        torch._check(C3 % 3 == 0, lambda: "flash_attention: qkv's last dimension must be 3 * C")
        # As csrc/checks.h (check_packed_qkv) and both backends: 0 < n_head, n_head divides C, head_dim >= 1.
        torch._check(0 < n_head <= C3 // 3 and (C3 // 3) % n_head == 0,
                     lambda: f"flash_attention: n_head must divide C = {C3 // 3} (head_dim >= 1), got {n_head}")
        if key_padding_mask is not None:
            torch._check(key_padding_mask.device == qkv.device,
                         lambda: "flash_attention: key_padding_mask must be on qkv's device")
        return qkv.new_empty((B, T, C3 // 3))

    register_reference_backward("flash_attention", reference.flash_attention)


def flash_attention(qkv, key_padding_mask, n_head: int):
    """Causal attention. qkv: (B, T, 3C) = q | k | v; key_padding_mask: (B, T) bool (True = attend) or None.
    Returns (B, T, C); query rows with no key to attend give zeros. A NaN or infinity in a query, or in a key
    the row attends, makes that row (of that head) NaN, as PyTorch's attention math does (see
    propagate_nonfinite); a NaN or infinity in a value reaches the output through the kernel itself. Under
    torch.func transforms and forward-mode AD (func_transforms.py), the eager reference."""
    if transforms_active():
        return reference.flash_attention(qkv, key_padding_mask, n_head)
    out = torch.ops.gpt_fast.flash_attention(qkv, key_padding_mask, n_head)
    return propagate_nonfinite(out, qkv, key_padding_mask, n_head)


def propagate_nonfinite(out, qkv, key_padding_mask, n_head: int):
    """out (B, T, C) with NaN in each (query row, head) whose query, or any key it attends (causal, not padded),
    holds a NaN or an infinity.

    PyTorch's fused SDPA kernels drop NaN scores in their online softmax (ordered comparisons in max and exp), and
    gpt_fast's CPU kernel, whose exp2 carries a NaN score through since the decode kernel needed it, still gives
    zeros for a row whose scores are all -inf (an infinite query); so without this a broken query or key can give
    a finite, wrong output where the eager math gives NaN. This pass reads q and k once
    more and writes the output once more, with no host synchronisation (so it also runs under torch.compile and
    CUDA graphs). Measured on one core at GPT-1's width: 5% (fp32) / 8% (bf16) of the kernel's time at B=1, T=512,
    about 20-27% at T=128 or B=8, T=64; against docs/figures.md's whole-model prefill figures, about 2% of a bf16
    layer and under 1% of an fp32 one.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    qk = qkv[..., :2 * C].unflatten(-1, (2, n_head, C // n_head))  # (B, T, 2, H, D), a view
    # A head's sum is NaN or infinite when one of its elements is (or, for elements near 1e37, when the float32 sum
    # overflows; scores from such a query or key overflow anyway). One strided read; isfinite(...).all() on this
    # view is 10x slower, abs().amax() 2-5x.
    bad = ~torch.isfinite(qk.sum(dim=-1, dtype=torch.float32))  # (B, T, 2, H)
    bad_q, bad_k = bad.unbind(dim=2)  # (B, T, H) each
    if key_padding_mask is not None:
        bad_k = bad_k & key_padding_mask.bool()[:, :, None]  # a padded key is never attended
    bad_rows = bad_q | (bad_k.cumsum(dim=1) > 0)  # causal: row i sees keys 0..i
    poison = out.new_zeros(bad_rows.shape).masked_fill_(bad_rows, float("nan"))  # (B, T, H): 0, or NaN
    # adding 0 leaves every value as it is; a broadcast add is 3-4x faster than a broadcast masked_fill here
    return (out.unflatten(-1, (n_head, C // n_head)) + poison[..., None]).flatten(-2)
