"""gpt_fast's forwards for transformers' OpenAIGPT Attention, MLP and Block (the residual adds + LayerNorms).

Each keeps transformers' signature and return value and runs gpt_fast's layer math under a KernelPlan
(ops/kernel_plan.py), as gpt_fast's own model does:
- Attention: self.c_attn, then the plan's attention backend on the packed qkv (gpt_fast's flash-attention kernel
  where it exists, else SDPA; models/attention.py), then self.c_proj;
- MLP: gelu_tanh(x W + b) through the fused bias_gelu kernel (models/linear.py's gemm engine), then self.c_proj;
- Block: ln(x + y) through the fused add_layernorm kernel, twice.
Submodules are called as modules, so hooks and wrapped layers (PEFT's LoRA layers, quantised linears) keep
working. A layer falls back to transformers' own forward (originals.py) wherever the kernels cannot give the same
answer: dropout active in Attention or MLP (train mode: the original draws the same random numbers as an unpatched
model; gpt_fast's own model takes the residual dropout into add_layernorm instead), attention probabilities asked
for, an attention mask that is not a 0/1 padding mask, a submodule that is not plain (another type, or hooks on
it: c_fc must give its output before the bias; a hooked LayerNorm must be called), or dtypes that differ
(autocast).
"""

from __future__ import annotations

import torch
from torch import nn

from gpt_fast.models.attention import backend_attention
from gpt_fast.models.hooks import hooked
from gpt_fast.models.linear import gemm
from gpt_fast.ops.func_transforms import transforms_active
from gpt_fast.ops.kernel_plan import KernelPlan, plan_kernels
from gpt_fast.patching.originals import modeling_openai, original, patch


def _plan(x: torch.Tensor, dropout: bool = False, needs_probs: bool = False) -> KernelPlan:
    return plan_kernels(None, x.device, x.dtype, dropout=dropout, needs_probs=needs_probs,
                        grad=torch.is_grad_enabled(), transformed=transforms_active())


def _plain(module, cls: type) -> bool:
    """module is exactly a `cls`, with no hooks: its math may be replaced by a kernel."""
    return type(module) is cls and not hooked(module)


def _padding_mask(attention_mask, x: torch.Tensor):
    """transformers' additive mask (B, 1, 1, T) of 0 (attend) and the dtype's minimum (padding) -> (B, T) bool,
    None for no mask; False when it is anything else (then the original forward runs)."""
    if attention_mask is None:
        return None
    B, T = x.shape[:2]
    if tuple(attention_mask.shape) != (B, 1, 1, T) or not attention_mask.is_floating_point():
        return False
    mask = attention_mask[:, 0, 0, :]
    attend = mask == 0
    if not torch.compiler.is_compiling() and not bool((attend | (mask == torch.finfo(mask.dtype).min)).all()):
        return False
    return attend


@patch
def attention_forward(self, x, attention_mask=None, output_attentions=False):
    """transformers' Attention.forward: x (B, T, C) -> [out (B, T, C)] (+ [probabilities] from the original)."""
    dropout = self.training and (self.attn_dropout.p > 0 or self.resid_dropout.p > 0)
    plan = _plan(x, dropout, needs_probs=bool(output_attentions))
    mask = _padding_mask(attention_mask, x)
    if dropout or not plan.fused or mask is False or not self.scale:
        return original(self, "forward")(x, attention_mask, output_attentions)
    qkv = self.c_attn(x)  # (B, T, 3C)
    out = backend_attention(plan, qkv, mask, self.n_head)  # (B, T, C)
    return [self.resid_dropout(self.c_proj(out))]


@patch
def mlp_forward(self, x):
    """transformers' MLP.forward: x (B, T, C) -> (B, T, C)."""
    dropout = self.training and self.dropout.p > 0
    plan = _plan(x, dropout=dropout)
    c_fc, hf = self.c_fc, modeling_openai()
    gelu_layer = type(self.act) is type(hf.ACT_FNS["gelu"]) and _plain(c_fc, hf.Conv1D) and c_fc.weight.dtype == x.dtype
    if dropout or not plan.fused or not gelu_layer:
        return original(self, "forward")(x)
    h = gemm(x, c_fc.weight, c_fc.bias, plan, gelu=True)  # (B, T, 4C)
    return self.dropout(self.c_proj(h))


def residual_layernorm(ln, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ln(x + y), in one fused kernel when ln is a plain LayerNorm over the last dimension and the dtypes agree."""
    fusable = (_plain(ln, nn.LayerNorm) and ln.weight is not None and ln.bias is not None
               and tuple(ln.normalized_shape) == (x.shape[-1],) and x.dtype == y.dtype == ln.weight.dtype)
    if not fusable:
        return ln(x + y)
    return _plan(x).add_layernorm(x, y, None, ln.weight, ln.bias, ln.eps)


@patch
def block_forward(self, x, attention_mask=None, output_attentions=False):
    """transformers' Block.forward: x (B, T, C) -> [h (B, T, C)] (+ [probabilities])."""
    attn_outputs = self.attn(x, attention_mask=attention_mask, output_attentions=output_attentions)
    n = residual_layernorm(self.ln_1, x, attn_outputs[0])
    h = residual_layernorm(self.ln_2, n, self.mlp(n))
    return [h] + list(attn_outputs[1:])
