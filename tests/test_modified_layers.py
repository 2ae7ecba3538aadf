"""Layers a user changed: an LM head that is not a plain nn.Linear (a wrapper, as PEFT's LoRA puts there; a hooked
nn.Linear; an nn.Linear subclass with its own forward; a plain nn.Linear with a bias), and hooked or subclassed Conv1D
layers. generate() (prefill and decode steps, with and without bound layers) and the loss without logits must call
such a head as a module, as the forward does; a plain head's bias must count in every engine
(gpt_fast/models/linear.py: plain_linear, project_to_vocab, call_head, bind_layers; models/heads.py:
weight_only_head); quantize() keeps such a head and refuses such a Conv1D (quantization/apply.py).

Each head modification makes one token win by a wide margin, so a path that skipped it would generate other tokens;
the oracle is a greedy loop over the model's own full forward (call_head: the head called as a module)."""

import copy

import pytest
import torch
import torch.nn as nn
from conftest import seeded_prompt, tiny_lm_fixtures

from gpt_fast import OpenAIGPTConfig, OpenAIGPTDoubleHeadsModel, OpenAIGPTLMHeadModel
from gpt_fast.models.linear import Conv1D, bind_layers, project_to_vocab
from gpt_fast.ops.kernel_plan import SMALL_M_MAX_ROWS, plan_kernels
from gpt_fast.quantization import QuantizedLinear

VOCAB, N_POSITIONS = 61, 40
hf, model = tiny_lm_fixtures(11, VOCAB, N_POSITIONS)
FAVOURED = 7  # the token each modified head makes win


def boost(logits: torch.Tensor) -> torch.Tensor:
    return logits + 100.0 * (torch.arange(logits.shape[-1]) == FAVOURED).to(logits.dtype)


class Wrapper(nn.Module):  # a module around the Linear, as PEFT's LoRA layers are
    def __init__(self, inner: nn.Linear):
        super().__init__()
        self.inner = inner

    @property
    def weight(self):  # the tied weight stays reachable, as through PEFT's base_layer
        return self.inner.weight

    def forward(self, x):
        return boost(self.inner(x))


class BoostingLinear(nn.Linear):  # a subclass whose forward is not nn.Linear's
    def forward(self, x):
        return boost(super().forward(x))


def wrapped(m):
    m.lm_head = Wrapper(m.lm_head)


def hooked(m):
    m.lm_head.register_forward_hook(lambda module, args, out: boost(out))


def pre_hooked(m):  # the hidden state scaled to zero: only a bias could then decide
    m.lm_head.register_forward_pre_hook(lambda module, args: (args[0] * 0.0,))
    with torch.no_grad():
        m.lm_head.bias = nn.Parameter(boost(torch.zeros(VOCAB, dtype=m.lm_head.weight.dtype)))


def subclassed(m):
    head = BoostingLinear(m.config.n_embd, VOCAB, bias=False)
    head.weight = m.lm_head.weight
    m.lm_head = head


def biased(m):  # a plain nn.Linear with a bias: the packed and bound engines must add it
    with torch.no_grad():
        m.lm_head.bias = nn.Parameter(boost(torch.zeros(VOCAB, dtype=m.lm_head.weight.dtype)))


MODIFICATIONS = [wrapped, hooked, pre_hooked, subclassed, biased]


def greedy_by_full_forwards(m, prompt, new_tokens):
    ids = prompt
    with torch.inference_mode():
        for _ in range(new_tokens):
            ids = torch.cat([ids, m(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("modify", MODIFICATIONS)
def test_generate_calls_the_head_as_the_forward_does(model, modify, dtype):
    m = copy.deepcopy(model).to(dtype)
    modify(m)
    prompt = seeded_prompt(VOCAB, 5, batch=2)
    out = m.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert (out[:, 5:] == FAVOURED).all()  # the modification counted in the prefill and in every step
    assert torch.equal(out, greedy_by_full_forwards(m, prompt, 6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, SMALL_M_MAX_ROWS, SMALL_M_MAX_ROWS + 1])
@torch.inference_mode()
def test_a_plain_heads_bias_counts_in_every_engine(model, dtype, rows):
    m = copy.deepcopy(model).to(dtype)
    with torch.no_grad():
        m.lm_head.bias = nn.Parameter(torch.randn(VOCAB, generator=torch.Generator().manual_seed(0)).to(dtype))
    x = torch.randn(rows, 1, m.config.n_embd, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected = (x.double() @ m.lm_head.weight.double().T + m.lm_head.bias.double())  # (rows, 1, V)
    plan = plan_kernels(None, torch.device("cpu"), dtype)
    got = {"unbound": project_to_vocab(m.lm_head, x, plan)}
    bound = bind_layers(m, plan, rows)
    if m.lm_head in bound.bound_layers:  # the packed engine serves this row count
        got["bound"] = project_to_vocab(m.lm_head, x, bound)
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    for name, logits in got.items():
        assert logits.shape == expected.shape, name
        torch.testing.assert_close(logits.double(), expected, rtol=tolerance, atol=tolerance, msg=name)


@torch.inference_mode()
def test_only_a_plain_head_is_bound(model):
    plan = plan_kernels(None, torch.device("cpu"), torch.float32)
    for modify in (wrapped, hooked, subclassed):
        m = copy.deepcopy(model)
        modify(m)
        assert m.lm_head not in bind_layers(m, plan, 1).bound_layers, modify.__name__
    assert model.lm_head in bind_layers(model, plan, 1).bound_layers



@pytest.mark.parametrize("head_class", [OpenAIGPTLMHeadModel, OpenAIGPTDoubleHeadsModel])
@pytest.mark.parametrize("modify", [wrapped, hooked, subclassed, biased])
def test_the_loss_without_logits_counts_the_head(head_class, modify):
    torch.manual_seed(0)
    config = OpenAIGPTConfig(vocab_size=VOCAB, n_positions=N_POSITIONS, n_embd=32, n_layer=2, n_head=2)
    m = head_class(config).eval()
    modify(m)
    shape = (2, 6) if head_class is OpenAIGPTLMHeadModel else (2, 2, 6)  # (B, [choices,] T)
    ids = seeded_prompt(VOCAB, 6, batch=len(torch.empty(shape).view(-1, 6))).view(shape)
    labels = torch.full(shape, FAVOURED)
    extra = {} if head_class is OpenAIGPTLMHeadModel else {"mc_token_ids": torch.full(shape[:-1], 5)}
    with torch.no_grad():
        with_logits = m(ids, labels=labels, **extra)
        without = m(ids, labels=labels, return_logits=False, **extra)
    assert without.logits is None
    torch.testing.assert_close(without.loss, with_logits.loss.float(), rtol=1e-5, atol=1e-5)
    assert without.loss < 1e-3  # the boosted token is the label everywhere: the head's modification counted


@pytest.mark.parametrize("modify", [wrapped, hooked, subclassed, biased])
def test_quantize_keeps_a_head_it_cannot_represent(model, modify):
    """The quantized LM head has no bias, hooks or subclass forward: such a head stays as it is (recorded so in the
    config), the rest of the model is quantized, and generation still follows the head."""
    m = copy.deepcopy(model)
    modify(m)
    head = m.lm_head
    m.quantize("int8")
    assert m.lm_head is head and m.quantization.lm_head is False
    assert isinstance(m.transformer.h[0].mlp.c_fc, QuantizedLinear)
    prompt = seeded_prompt(VOCAB, 5, batch=2)
    out = m.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert (out[:, 5:] == FAVOURED).all()


class ScaledConv1D(Conv1D):
    def forward(self, x, *args, **kwargs):
        return 2 * super().forward(x, *args, **kwargs)


def test_quantize_refuses_a_block_layer_it_would_change(model):
    hooked_model = copy.deepcopy(model)
    hooked_model.transformer.h[1].attn.c_proj.register_forward_hook(lambda module, args, out: out)
    with pytest.raises(ValueError, match=r"cannot quantize transformer\.h\.1\.attn\.c_proj: it has forward hooks"):
        hooked_model.quantize("int8")
    subclassed_model = copy.deepcopy(model)
    old = subclassed_model.transformer.h[0].mlp.c_fc
    layer = ScaledConv1D(old.weight.shape[1], old.weight.shape[0])
    layer.load_state_dict(old.state_dict())
    subclassed_model.transformer.h[0].mlp.c_fc = layer
    with pytest.raises(ValueError, match=r"cannot quantize transformer\.h\.0\.mlp\.c_fc: it is a ScaledConv1D"):
        subclassed_model.quantize("int4", 32)
    assert subclassed_model.quantization is None  # nothing was replaced
