"""The GPT-1 transformer: post-LayerNorm blocks, tanh-GELU MLP, learned positions.

Parameter names and shapes match transformers' checkpoints (`tokens_embed`, `positions_embed`,
`h.N.attn.c_attn`, `h.N.ln_1`, ...; linear weights stored (in, out) like transformers' Conv1D), so
state dicts move between the two unchanged. The heads live in gpt_fast/heads.py.

Each forward picks its attention backend once (gpt_fast.attention). The "fused" backend also routes the
post-attention and post-MLP residual+LayerNorm and the MLP's bias+GELU through gpt_fast kernels. The kernels have
no dropout, so a forward with dropout active (train mode) runs the "sdpa" math instead; their backward is the
eager reference's (gpt_fast/ops/_autograd.py), correct but not fast.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from gpt_fast import ops, reference
from gpt_fast.attention import backend_attention, eager_attention, resolve_attn_implementation
from gpt_fast.configuration import OpenAIGPTConfig
from gpt_fast.outputs import BaseModelOutput
from gpt_fast.pretrained import OpenAIGPTPreTrainedModel
from gpt_fast.validation import check_model_inputs
from gpt_fast.weight_cache import cached_on

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def kernel_or_reference(op_name: str, device_type: str):
    """gpt_fast.ops.<op_name> when its kernel exists for the device, else gpt_fast.reference.<op_name>."""
    return getattr(ops if ops.has_kernel(op_name, device_type) else reference, op_name)


def onednn_prepacked_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether Conv1D.fused should use oneDNN's GEMM on a weight packed once (bf16 on CPU). Measured at GPT-1
    prefill shapes (512 rows): 1.4x faster than torch.addmm for the widening layers (c_attn, c_fc, GELU in its
    epilogue), 1.6-1.9x slower than torch.mm for the narrowing ones (the c_proj layers), so only widening layers
    use it. It has no autograd, and torch.compile does its own packing. weight: (in, out)."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.bfloat16 and weight.shape[1] > weight.shape[0]
            and torch.backends.mkldnn.is_available() and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


class Conv1D(nn.Module):
    """A linear layer whose weight is stored (in_features, out_features), as in GPT checkpoints."""

    def __init__(self, out_features: int, in_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x, with_bias: bool = True):  # (..., in) -> (..., out)
        flat = x.reshape(-1, x.shape[-1])
        out = torch.addmm(self.bias, flat, self.weight) if with_bias else flat @ self.weight
        return out.view(*x.shape[:-1], self.weight.shape[1])

    def fused(self, x, with_bias: bool, gelu: bool = False):
        """The inference path of the "fused" backend: (..., in) -> (..., out), optionally gelu_tanh(x W + b).
        A GELU always takes the bias (the bias_gelu kernel, or oneDNN's epilogue, applies both)."""
        if onednn_prepacked_usable(x, self.weight):
            packed = cached_on(self, "onednn_weight", [self.weight],
                               lambda: torch.ops.mkldnn._reorder_linear_weight(self.weight.detach().t().contiguous()))
            bias = self.bias if with_bias or gelu else None
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu" if gelu else "none", [],
                                                      "tanh" if gelu else "")
        if gelu:
            return kernel_or_reference("bias_gelu", x.device.type)(self(x, with_bias=False), self.bias)
        return self(x, with_bias=with_bias)


class Attention(nn.Module):
    def __init__(self, config: OpenAIGPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = Conv1D(3 * config.n_embd, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def attend(self, x, attention_mask, backend: str, head_mask=None, output_attentions: bool = False):
        """x: (B, T, C) -> (attention output before c_proj (B, T, C), probabilities (B, H, T, T) or None)."""
        qkv = self.c_attn.fused(x, with_bias=True) if backend == "fused" else self.c_attn(x)  # (B, T, 3C)
        dropout_p = self.attn_dropout.p if self.training else 0.0
        if output_attentions or head_mask is not None:  # only the eager math has the probabilities
            out, probs = eager_attention(qkv, attention_mask, self.n_head, dropout_p, head_mask)
            return out, (probs if output_attentions else None)
        return backend_attention(backend, qkv, attention_mask, self.n_head, dropout_p), None


class MLP(nn.Module):
    def __init__(self, config: OpenAIGPTConfig):
        super().__init__()
        self.c_fc = Conv1D(4 * config.n_embd, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, 4 * config.n_embd)
        self.act = ACTIVATIONS[config.afn]
        self.dropout = nn.Dropout(config.resid_pdrop)
        self.gelu = config.afn == "gelu"

    def forward(self, x, fused: bool = False):  # (B, T, C) -> (B, T, C), c_proj's bias left out when fused
        if not fused:
            return self.c_proj(self.act(self.c_fc(x)))
        hidden = self.c_fc.fused(x, with_bias=True, gelu=True) if self.gelu else self.act(self.c_fc.fused(x, True))
        return self.c_proj.fused(hidden, with_bias=False)  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: OpenAIGPTConfig):
        super().__init__()
        self.attn = Attention(config)
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, x, attention_mask, backend: str, fused_ln: bool, head_mask=None, output_attentions=False):
        a, probs = self.attn.attend(x, attention_mask, backend, head_mask, output_attentions)
        return self.finish(x, a, fused_ln), probs

    def finish(self, x, a, fused_ln: bool):
        """Everything after attention. x: the block input (B, T, C); a: attention output before c_proj (B, T, C)."""
        if fused_ln:  # residual add, c_proj bias and LayerNorm in one kernel each
            n = self._add_layernorm(x, self.attn.c_proj.fused(a, with_bias=False), self.attn.c_proj.bias, self.ln_1)
            m = self.mlp(n, fused=True)
            return self._add_layernorm(n, m, self.mlp.c_proj.bias, self.ln_2)
        n = self.ln_1(x + self.attn.resid_dropout(self.attn.c_proj(a)))
        return self.ln_2(n + self.mlp.dropout(self.mlp(n)))

    @staticmethod
    def _add_layernorm(x, y, bias, ln: nn.LayerNorm):
        add_layernorm = kernel_or_reference("add_layernorm", x.device.type)
        return add_layernorm(x, y, bias, ln.weight, ln.bias, ln.eps)


class OpenAIGPTModel(OpenAIGPTPreTrainedModel):
    base_model_prefix = ""

    def __init__(self, config: OpenAIGPTConfig, attn_implementation: str | None = None):
        super().__init__(config, attn_implementation)
        self.tokens_embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.positions_embed = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.register_buffer("position_ids", torch.arange(config.n_positions), persistent=False)
        self.init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tokens_embed

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self.tokens_embed = embeddings

    def pick_backend(self, device: torch.device, output_attentions: bool, head_mask) -> tuple[str, bool]:
        """(attention backend, whether the fused LayerNorm/GELU kernels may run) for this forward."""
        backend = resolve_attn_implementation(self.attn_implementation, device.type)
        dropout_active = self.training and max(self.config.resid_pdrop, self.config.attn_pdrop) > 0
        if backend == "fused" and dropout_active:
            backend = "sdpa"  # the kernels have no dropout
        return backend, backend == "fused" and not (output_attentions or head_mask is not None)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        shape = check_model_inputs(config, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids)
        T = shape[-1]

        if inputs_embeds is None:
            inputs_embeds = self.tokens_embed(input_ids.reshape(-1, T))  # (B, T, C)
        else:
            inputs_embeds = inputs_embeds.reshape(-1, T, config.n_embd)
        if position_ids is None:
            position_ids = self.position_ids[None, :T]  # (1, T)
        hidden = inputs_embeds + self.positions_embed(position_ids.reshape(-1, T))
        if token_type_ids is not None:
            hidden = hidden + self.tokens_embed(token_type_ids.reshape(-1, T))
        hidden = self.drop(hidden)  # (B, T, C)
        if attention_mask is not None:
            attention_mask = attention_mask.reshape(-1, T)
        head_mask = self._expand_head_mask(head_mask)

        backend, fused_ln = self.pick_backend(hidden.device, output_attentions, head_mask)
        all_hidden = [] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for i, block in enumerate(self.h):
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden, probs = block(hidden, attention_mask, backend, fused_ln,
                                  None if head_mask is None else head_mask[i], output_attentions)
            if output_attentions:
                all_attentions.append(probs)
        hidden = hidden.view(*shape, config.n_embd)
        if output_hidden_states:
            all_hidden.append(hidden)

        output = BaseModelOutput(hidden, tuple(all_hidden) if output_hidden_states else None,
                                 tuple(all_attentions) if output_attentions else None)
        return output if return_dict else output.to_tuple()

    def _expand_head_mask(self, head_mask):
        """None, (H,) or (n_layer, H) -> None or (n_layer, H), as transformers' get_head_mask."""
        if head_mask is None:
            return None
        n_layer, n_head = self.config.n_layer, self.config.n_head
        if head_mask.dim() == 1 and head_mask.shape[0] == n_head:
            return head_mask.expand(n_layer, n_head)
        if head_mask.dim() == 2 and tuple(head_mask.shape) == (n_layer, n_head):
            return head_mask
        raise ValueError(f"head_mask must have shape ({n_head},) or ({n_layer}, {n_head}), got {tuple(head_mask.shape)}")
