"""The GPT-1 transformer: post-LayerNorm blocks, tanh-GELU MLP, learned positions.

Parameter names and shapes match transformers' checkpoints (`tokens_embed`, `positions_embed`,
`h.N.attn.c_attn`, `h.N.ln_1`, ...; linear weights stored (in, out) like transformers' Conv1D), so
state dicts move between the two unchanged. The heads live in models/heads.py.

One Block body and one layer loop (`OpenAIGPTModel.run_layers`) serve the model's forward, the generation
prefill and every decode step: the callers differ only in the positions they embed and in the attention they
pass in (the prompt's backend, or attention over a KV cache that the keys and values are written into). Which
kernels run is a KernelPlan (gpt_fast/ops/kernel_plan.py), decided once per forward: with the attention
probabilities wanted, the module math of transformers runs; otherwise the fused kernels and the
linear engines of models/linear.py. In train mode the residual dropout runs inside add_layernorm (a Philox mask
under a seed drawn per call from torch's generator, so torch.manual_seed reproduces a run); the embedding dropout
stays nn.Dropout.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
import torch.utils.checkpoint
from torch import nn

from gpt_fast.models.attention import backend_attention, eager_attention
from gpt_fast.models.block_modules import call_linear, fusable_gelu, module_by_module, native
from gpt_fast.models.configuration import OpenAIGPTConfig
from gpt_fast.models.linear import Conv1D
from gpt_fast.models.outputs import BaseModelOutput
from gpt_fast.models.pretrained import OpenAIGPTPreTrainedModel
from gpt_fast.models.validation import check_model_inputs
from gpt_fast.ops import philox
from gpt_fast.ops.func_transforms import transforms_active
from gpt_fast.ops.kernel_plan import KernelPlan, plan_kernels

# config.afn -> the MLP's activation module ("gelu": GPT's tanh approximation); modules, as transformers' are, so that
# hooks on mlp.act run
ACTIVATIONS = {
    "gelu": functools.partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}

# attend(layer index, qkv (B, T, 3C)) -> (attention output before c_proj (B, T, C), probabilities or None)
Attend = Callable[[int, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


class Attention(nn.Module):
    fusable = True  # the fused block body may call c_attn and c_proj itself (models/block_modules.py)

    def __init__(self, config: OpenAIGPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = Conv1D(3 * config.n_embd, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def attend(self, qkv, attention_mask, plan: KernelPlan, head_mask=None, output_attentions: bool = False):
        """The prompt's causal attention. qkv: (B, T, 3C) -> ((B, T, C), probabilities (B, H, T, T) or None)."""
        dropout_p = self.attn_dropout.p if self.training else 0.0
        if plan.attention == "eager":  # the only backend with probabilities (and a head mask)
            out, probs = eager_attention(qkv, attention_mask, self.n_head, dropout_p, head_mask)
            return out, (probs if output_attentions else None)
        return backend_attention(plan, qkv, attention_mask, self.n_head, dropout_p), None

    def forward(self, x, plan: KernelPlan, attend: Callable):
        """Module by module, as transformers' Attention: resid_dropout(c_proj(attention(c_attn(x)))), x (B, T, C) ->
        ((B, T or T', C), probabilities or None); attend as Block.forward's."""
        a, probs = attend(call_linear(self.c_attn, x, plan))
        return self.resid_dropout(call_linear(self.c_proj, a, plan)), probs


class MLP(nn.Module):
    fusable = True  # the fused block body may call its layers itself (models/block_modules.py)

    def __init__(self, config: OpenAIGPTConfig):
        super().__init__()
        self.c_fc = Conv1D(4 * config.n_embd, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, 4 * config.n_embd)
        self.act = ACTIVATIONS[config.afn]()
        self.dropout = nn.Dropout(config.resid_pdrop)

    def hidden(self, x, plan: KernelPlan):
        """(B, T, C) -> (B, T, 4C): act(c_fc(x)), the tanh GELU fused into c_fc's call when act is that GELU."""
        parts = self._modules  # not nn.Module's __getattr__: this runs in every block of every decode step
        if plan.fuse_modules and fusable_gelu(parts["act"]):
            return parts["c_fc"](x, plan, gelu=True)
        return parts["act"](parts["c_fc"](x, plan))

    def forward(self, x, plan: KernelPlan | None = None):
        """Module by module, as transformers' MLP: dropout(c_proj(act(c_fc(x)))), (B, T, C) -> (B, T, C). Without a
        plan (called as transformers calls it, by a module wrapped around this one) the layers multiply with
        PyTorch's GEMM."""
        return self.dropout(call_linear(self.c_proj, self.act(call_linear(self.c_fc, x, plan)), plan))


def _at(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """x (B, T, C) at positions (B, T') -> (B, T', C); x itself without positions."""
    return x if positions is None else x[torch.arange(x.shape[0], device=x.device)[:, None], positions]


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    """module.<name>: from _parameters (nn.Module's __getattr__ costs a measurable share of a decode step) unless a
    parametrization or pruning computes it (models/linear.py: computed_weights)."""
    tensor = module._parameters.get(name)
    return getattr(module, name) if tensor is None else tensor


class Block(nn.Module):
    def __init__(self, config: OpenAIGPTConfig):
        super().__init__()
        self.attn = Attention(config)
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, x, plan: KernelPlan, attend: Callable, positions: torch.Tensor | None = None):
        """x: (B, T, C); attend(qkv (B, T, 3C)) -> (attention output (B, T, C), probabilities or None).
        Returns (the block output (B, T, C), the probabilities). positions (B, T'): only each row's output at
        these positions is wanted; attend then returns the attention output at those positions only, (B, T', C), and
        the block returns (B, T', C) (the projections and the MLP run on T' rows, not T)."""
        # Submodules read from _modules once: nn.Module's __getattr__ costs a measurable share of a decode step.
        modules = self._modules
        attn, mlp = modules["attn"], modules["mlp"]
        if not plan.fuse_modules:  # module by module, as transformers' Block: each hook sees what it sees there
            a, probs = attn(x, plan, attend)
            n = modules["ln_1"](_at(x, positions) + a)
            return modules["ln_2"](n + (mlp(n, plan) if native(mlp) else mlp(n))), probs
        attn_parts, mlp_parts = attn._modules, mlp._modules
        a, probs = attend(attn_parts["c_attn"](x, plan))
        x = _at(x, positions)
        n = self.residual_norm(x, attn_parts["c_proj"], a, attn_parts["resid_dropout"], modules["ln_1"], plan)
        h = mlp.hidden(n, plan)  # (B, T or T', 4C)
        return self.residual_norm(n, mlp_parts["c_proj"], h, mlp_parts["dropout"], modules["ln_2"], plan), probs

    @staticmethod
    def residual_norm(x, proj: Conv1D, h, dropout: nn.Dropout, ln: nn.LayerNorm, plan: KernelPlan):
        """ln(x + dropout(proj(h))); residual add, proj's bias, the dropout and the LayerNorm in one kernel (the
        mask: Philox's under a seed drawn here, from torch's generator). Under torch.compile a dropout runs as module
        math (the seed would be a host value read from a tensor: a graph break), which inductor fuses itself."""
        p = dropout.p if dropout.training else 0.0
        if not (p > 0 and torch.compiler.is_compiling()):
            seed = philox.draw_seed() if p > 0 else 0
            return plan.add_layernorm(x, proj(h, plan, with_bias=False), _tensor(proj, "bias"), _tensor(ln, "weight"),
                                      _tensor(ln, "bias"), ln.eps, p, seed)
        return ln(x + dropout(proj(h, plan)))


class OpenAIGPTModel(OpenAIGPTPreTrainedModel):
    def __init__(self, config: OpenAIGPTConfig, attn_implementation: str | None = None):
        super().__init__(config, attn_implementation)
        self.tokens_embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.positions_embed = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        # transformers' attribute. The forward makes its positions with arange instead of reading it: after
        # to_empty() (deferred initialisation on the meta device) a non-persistent buffer holds uninitialised memory.
        self.register_buffer("position_ids", torch.arange(config.n_positions), persistent=False)
        self.gradient_checkpointing: dict | None = None  # activation checkpointing's settings while enabled
        # A bool, not the config's floats: under torch.compile a float that differs between two compiled models
        # becomes symbolic, and the plan's memo key must be concrete.
        self.configured_dropout = bool(max(config.resid_pdrop, config.attn_pdrop) > 0)
        self.init_weights()

    def plan(self, device: torch.device, dtype: torch.dtype, needs_probs: bool = False,
             blocks: bool = True) -> KernelPlan:
        """The kernels for a call of this model on `device` in `dtype` (see gpt_fast/ops/kernel_plan.py). blocks:
        the plan runs the blocks, so hooks on their modules count (False: only the LM head's engines are read)."""
        dropout = self.training and self.configured_dropout
        return plan_kernels(self.attn_implementation, device, dtype, dropout=dropout, needs_probs=needs_probs,
                            grad=torch.is_grad_enabled(), autocast=torch.is_autocast_enabled(device.type),
                            transformed=transforms_active(), by_module=blocks and module_by_module(self.h))

    def embed(self, input_ids=None, positions=None, token_type_ids=None, inputs_embeds=None):
        """Token + position (+ token type) embeddings, (..., T) -> (..., T, C), before the embedding dropout."""
        hidden = self.tokens_embed(input_ids) if inputs_embeds is None else inputs_embeds
        hidden = hidden + self.positions_embed(positions)
        if token_type_ids is not None:
            hidden = hidden + self.tokens_embed(token_type_ids)
        return hidden

    def run_layers(self, hidden, plan: KernelPlan, attend: Attend, all_hidden: list | None = None,
                   all_probs: list | None = None, last_positions: torch.Tensor | None = None):
        """The layer loop of every path. hidden: (B, T, C); attend as Attend. Appends each block's input to
        all_hidden and its probabilities to all_probs when given. Returns the last block's output (B, T, C), or
        with last_positions (B, T') its output at those positions only, (B, T', C) (Block's positions: the last attend
        returns those queries only). With gradient checkpointing on and the model training, each block is
        recomputed in the backward pass."""
        checkpointing = self.gradient_checkpointing is not None and self.training and torch.is_grad_enabled()
        last = len(self.h) - 1
        for i, block in enumerate(self.h):
            if all_hidden is not None:
                all_hidden.append(hidden)
            block_attend = functools.partial(attend, i)
            positions = last_positions if i == last else None
            if checkpointing and i % self.gradient_checkpointing["every_n_layers"] == 0:
                hidden, probs = self._checkpointed(block, hidden, plan, block_attend, positions)
            else:
                hidden, probs = block(hidden, plan, block_attend, positions)
            if all_probs is not None:
                all_probs.append(probs)
        return hidden

    def _checkpointed(self, block: Block, hidden, plan: KernelPlan, attend, positions=None):
        """block(hidden, plan, attend, positions), its activations recomputed in the backward pass (and its saved input
        kept in CPU memory with offload)."""
        settings = self.gradient_checkpointing
        offload = settings["offload"] and hidden.device.type != "cpu"
        context = (torch.autograd.graph.save_on_cpu(pin_memory=hidden.device.type == "cuda") if offload
                   else contextlib.nullcontext())
        with context:
            return torch.utils.checkpoint.checkpoint(block, hidden, plan, attend, positions, **settings["kwargs"])

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, *, head_mask=None,
                use_cache=None, **kwargs):
        """transformers' positional order (input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
        ...); head_mask, which transformers 5 dropped, is keyword-only. attention_mask and token_type_ids may
        have the input's shape (..., T) or be flattened to (N, T). use_cache is accepted and changes nothing, as in
        transformers, whose OpenAIGPT forward keeps no cache either (generate() has its own)."""
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        shape = check_model_inputs(config, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids)
        T = shape[-1]

        if position_ids is None:
            position_ids = torch.arange(T, device=self.positions_embed.weight.device)[None]  # (1, T)
        hidden = self.drop(self.embed(
            None if input_ids is None else input_ids.reshape(-1, T), position_ids.reshape(-1, T),
            None if token_type_ids is None else token_type_ids.reshape(-1, T),
            None if inputs_embeds is None else inputs_embeds.reshape(-1, T, config.n_embd)))  # (B, T, C)
        if attention_mask is not None:
            attention_mask = attention_mask.reshape(-1, T)
        head_mask = self._expand_head_mask(head_mask)
        plan = self.plan(hidden.device, hidden.dtype, needs_probs=bool(output_attentions) or head_mask is not None)

        def attend(i, qkv):
            return self.h[i].attn.attend(qkv, attention_mask, plan, None if head_mask is None else head_mask[i],
                                         output_attentions)

        all_hidden = [] if output_hidden_states else None
        all_probs = [] if output_attentions else None
        hidden = self.run_layers(hidden, plan, attend, all_hidden, all_probs).view(*shape, config.n_embd)
        if output_hidden_states:
            all_hidden.append(hidden)
        output = BaseModelOutput(hidden, tuple(all_hidden) if output_hidden_states else None,
                                 tuple(all_probs) if output_attentions else None)
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
        raise ValueError(f"head_mask must have shape ({n_head},) or ({n_layer}, {n_head}), "
                         f"got {tuple(head_mask.shape)}")
