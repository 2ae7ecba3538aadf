"""Train mode with residual dropout keeps the fused kernels: a small GPT-1 (resid_pdrop 0.1, embd_pdrop 0.1) in train
mode runs add_layernorm (the dropout inside, Philox's mask under a seed drawn per call) and bias_gelu, forward and
backward, and its loss and gradients equal the module math (transformers' ln(x + dropout(proj(h))), "eager"
attention) fed the same masks: the blocks' residual dropout modules replaced by gpt_fast.ops.philox.dropout with a
seed drawn at the same point of torch's random stream. Also: the masks matter (nn.Dropout's masks give another loss),
torch.manual_seed reproduces a step, and the plan keeps fused = True with dropout (under autocast too)."""

import pytest
import torch
from dispatch_recorder import OpRecorder

import gpt_fast
from gpt_fast.ops import has_kernel, philox
from gpt_fast.ops.kernel_plan import plan_kernels

pytestmark = pytest.mark.skipif(not has_kernel("add_layernorm", "cpu"), reason="no CPU kernels built")

CONFIG = dict(vocab_size=96, n_positions=16, n_embd=48, n_layer=2, n_head=4, resid_pdrop=0.1, attn_pdrop=0.0,
              embd_pdrop=0.1)
FORWARD_KERNELS = {"gpt_fast.add_layernorm.default", "gpt_fast.bias_gelu.default"}
BACKWARD_KERNELS = {"gpt_fast.add_layernorm_backward.default", "gpt_fast.bias_gelu_backward.default"}


class PhiloxDropout(torch.nn.Dropout):
    """nn.Dropout with the kernels' Philox mask, its seed drawn where the fused path draws it (in the same order)."""

    def forward(self, x):
        p = self.p if self.training else 0.0
        return philox.dropout(x, philox.draw_seed() if p > 0 else 0, p)


def step(backend: str, state: dict, ids: torch.Tensor, seed: int = 0, record: OpRecorder | None = None,
         philox_masks: bool = False):
    """One forward + backward in train mode: (loss, {name: gradient}). philox_masks: the blocks' residual dropouts
    draw the kernels' masks (PhiloxDropout)."""
    model = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**CONFIG), attn_implementation=backend)
    model.load_state_dict(state)
    if philox_masks:
        for block in model.transformer.h:
            block.attn.resid_dropout = PhiloxDropout(block.attn.resid_dropout.p)
            block.mlp.dropout = PhiloxDropout(block.mlp.dropout.p)
    model.train()
    torch.manual_seed(seed)
    if record is None:
        loss = model(ids, labels=ids).loss
        loss.backward()
    else:
        with record:
            loss = model(ids, labels=ids).loss
            loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    state = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**CONFIG)).state_dict()
    ids = torch.randint(0, CONFIG["vocab_size"], (3, 16), generator=torch.Generator().manual_seed(1))
    return state, ids


def test_train_step_runs_the_kernels_and_equals_the_module_math_with_the_same_masks(setup):
    state, ids = setup
    record = OpRecorder()
    fused_loss, fused_grads = step("fused", state, ids, record=record)
    assert FORWARD_KERNELS | BACKWARD_KERNELS <= set(record.called), sorted(set(record.called))
    eager_loss, eager_grads = step("eager", state, ids, philox_masks=True)
    torch.testing.assert_close(fused_loss, eager_loss, rtol=1e-5, atol=0)
    for name, grad in fused_grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_masks_matter_and_a_seed_reproduces_the_step(setup):
    state, ids = setup
    fused_loss, fused_grads = step("fused", state, ids)
    again_loss, again_grads = step("fused", state, ids)
    assert torch.equal(fused_loss, again_loss)
    assert all(torch.equal(g, again_grads[name]) for name, g in fused_grads.items())
    other_seed, _ = step("fused", state, ids, seed=1)
    module_masks, _ = step("eager", state, ids)  # nn.Dropout's masks, not Philox's
    assert not torch.allclose(fused_loss, other_seed) and not torch.allclose(fused_loss, module_masks)


def test_the_plan_keeps_the_kernels_with_dropout():
    cpu = torch.device("cpu")
    train = plan_kernels(None, cpu, torch.float32, dropout=True, grad=True)
    assert train.fused and train.add_layernorm is gpt_fast.ops.add_layernorm
    assert train.bias_gelu is gpt_fast.ops.bias_gelu
    autocast = plan_kernels(None, cpu, torch.float32, dropout=True, grad=True, autocast=True)
    assert autocast.fused and autocast.add_layernorm is not gpt_fast.ops.reference.add_layernorm  # main's casts
    assert not plan_kernels("eager", cpu, torch.float32, dropout=True).fused


def test_under_torch_compile_a_residual_dropout_runs_as_module_math(setup, monkeypatch):
    """The seed is a host value drawn from a tensor: traced, it would be a data-dependent graph break (and
    fullgraph=True fails on it), so under torch.compile the residual dropout is module math (inductor fuses it).
    Checked here with is_compiling() faked; a real torch.compile(fullgraph=True) train step passed by hand."""
    state, ids = setup
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    record = OpRecorder()
    step("fused", state, ids, record=record)
    assert "gpt_fast.add_layernorm.default" not in record.called
    assert "gpt_fast.bias_gelu.default" in record.called


@pytest.mark.parametrize("train_kernel", [True, False])
def test_the_cuda_plan_keeps_the_fused_attention_where_the_train_kernel_exists(monkeypatch, train_kernel):
    """The plan for a CUDA model in train mode with attention dropout, decided without a GPU from which kernels the
    extension registered: "fused" (flash_attention_train with dropout inside, its backward kernel) where the CUDA
    train kernel exists, "sdpa" where only the inference kernel does."""
    from gpt_fast.ops import _library, kernel_plan

    cuda = {(op, "cuda") for op in ("flash_attention", "add_layernorm", "bias_gelu")}
    if train_kernel:
        cuda |= {("flash_attention_train", "cuda"), ("flash_attention_backward", "cuda")}
    monkeypatch.setattr(_library, "_KERNELS", frozenset(_library._KERNELS | cuda) - (
        set() if train_kernel else {("flash_attention_train", "cuda"), ("flash_attention_backward", "cuda")}))
    kernel_plan.clear_plans()
    try:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            plan = plan_kernels(None, torch.device("cuda"), dtype, dropout=True, grad=True)
            assert plan.attention == ("fused" if train_kernel else "sdpa"), dtype
            assert plan_kernels(None, torch.device("cuda"), dtype, dropout=False, grad=True).attention == "fused"
    finally:
        kernel_plan.clear_plans()


@pytest.mark.skipif(not has_kernel("flash_attention", "cuda"), reason="extension built without CUDA")
def test_a_cuda_build_registers_the_train_kernels():
    """Built with CUDA (no GPU needed to register), the training attention has its CUDA kernels, so the plan keeps
    "fused" for a CUDA model in train mode with dropout."""
    assert has_kernel("flash_attention_train", "cuda") and has_kernel("flash_attention_backward", "cuda")
    assert plan_kernels(None, torch.device("cuda"), torch.bfloat16, dropout=True, grad=True).attention == "fused"
