"""Shared fixtures of the model tests: tiny configs, transformers reference models, a GPT-1-shaped checkpoint.

Expected values in the model tests come from transformers (the reference implementation) or from computations
written out in the tests, never from gpt_fast itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from inductor_cache import isolate_inductor_cache

from gpt_fast.ops import has_kernel

SHARED_GPT = Path(__file__).resolve().parents[2] / "shared" / "openai-gpt"
REQUIRE_EXTENSION = "GPT_FAST_REQUIRE_EXTENSION"  # CI sets it to 1: a missing extension fails the run


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from torch.manual_seed(0), so a test that draws inputs without its own generator still
    draws the same ones on every run (a failure replays; none passes or fails by the luck of the draw)."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _glibc_defaults(monkeypatch):
    """The trainer keeps freed memory mapped by default (gpt_fast/training/allocator.py), a process-wide setting
    that would stay for the rest of the session: here glibc keeps its defaults (tests/test_allocator.py measures the
    real setting in a child process)."""
    from gpt_fast.training import allocator

    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: False)


def pytest_configure(config):
    """Each ATen CPU capability compiles into its own inductor cache. Kernel tests skip only when no extension was
    built. A library that was built but does not load, or a run that requires the extension
    (GPT_FAST_REQUIRE_EXTENSION=1, as CI does) without one, stops the run."""
    import os

    import gpt_fast
    from gpt_fast import ops

    isolate_inductor_cache()  # before anything is compiled: tests/inductor_cache.py says why
    if ops.extension_loaded():
        return
    built = sorted(Path(gpt_fast.__file__).parent.glob("_C*.so"))
    if built:
        pytest.exit(f"gpt_fast's extension {built[0].name} was built but does not load: {ops.load_error()}", 3)
    if os.environ.get(REQUIRE_EXTENSION) == "1":
        pytest.exit(f"{REQUIRE_EXTENSION}=1 but gpt_fast._C is missing: {ops.load_error()}", 3)

TINY = dict(vocab_size=99, n_positions=32, n_embd=32, n_layer=2, n_head=4)
HEADS = ("OpenAIGPTModel", "OpenAIGPTLMHeadModel", "OpenAIGPTDoubleHeadsModel", "OpenAIGPTForSequenceClassification")


def hf_config(**overrides):
    """A transformers.OpenAIGPTConfig of the tiny shape (pad id 0 so sequence classification takes batches).

    Weights are drawn with std 0.2 rather than GPT-1's 0.02 so that, at width 32, activations reach the range
    where small mistakes show (GELU's tanh form against erf, a mis-scaled softmax): pre-activations of order 1.
    """
    import transformers

    return transformers.OpenAIGPTConfig(**{**TINY, "pad_token_id": 0, "initializer_range": 0.2, **overrides})


def hf_model(head: str, seed: int = 0, **overrides):
    """A transformers reference model of the tiny shape, in eval mode, with seeded random weights.

    Every weight is redrawn with std config.initializer_range (transformers leaves its Conv1D layers at 0.02), and
    biases and LayerNorm parameters are moved away from 0 and 1, so that a bias or LayerNorm parameter loaded
    into the wrong place changes the outputs.
    """
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, head)(hf_config(**overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, model.config.initializer_range)
    return model.eval()


def gpt_fast_class(head: str):
    import gpt_fast

    return getattr(gpt_fast, head)


def random_ids(shape, vocab: int = TINY["vocab_size"], seed: int = 1, low: int = 1) -> torch.Tensor:
    """Token ids in [low, vocab): id 0 is the tiny configs' pad token."""
    return torch.randint(low, vocab, shape, generator=torch.Generator().manual_seed(seed))


def flatten_outputs(value) -> list[torch.Tensor]:
    """The tensors of a (possibly nested) tuple of outputs, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for item in value for t in flatten_outputs(item)]


def assert_outputs_close(ours, theirs, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """Tuples of outputs (tensors or tuples of tensors) agree element by element, with the same structure."""
    assert type(ours) is tuple and type(theirs) is tuple, (type(ours), type(theirs))
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if isinstance(b, torch.Tensor):
            assert isinstance(a, torch.Tensor), f"output {i}: {type(a).__name__} instead of a tensor"
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, i=i: f"output {i}: {m}")
        else:
            assert_outputs_close(tuple(a), tuple(b), atol, rtol)


def _tier_params():
    """Every CPU kernel tier (csrc/cpu/cpu_isa.h); the ones this CPU lacks are skipped, saying so."""
    from gpt_fast.ops import cpu_isa

    detected = cpu_isa.detected_level()
    return [pytest.param(level, marks=pytest.mark.skipif(
        cpu_isa.LEVELS.index(level) > cpu_isa.LEVELS.index(detected),
        reason=f"this CPU lacks the {level} tier (it has {detected})")) for level in cpu_isa.LEVELS]


@pytest.fixture(params=_tier_params())
def cpu_tier(request, monkeypatch):
    """Runs the test once per kernel tier this CPU can execute, capping the kernels (and the library paths
    chosen in Python) at it with GPT_FAST_CPU_ISA."""
    from gpt_fast.ops import cpu_isa

    monkeypatch.setenv(cpu_isa.ENV, request.param)
    assert cpu_isa.level() == request.param
    return request.param


@pytest.fixture
def no_kernels(monkeypatch):
    """The package as it is when the extension holds no kernel (the kernel plans are chosen afresh)."""
    from gpt_fast.ops import _library, kernel_plan

    monkeypatch.setattr(_library, "_KERNELS", frozenset())
    kernel_plan.clear_plans()
    yield
    kernel_plan.clear_plans()


def tiny_lm(seed: int, vocab: int, n_positions: int):
    """A transformers OpenAIGPTLMHeadModel (2 layers, width 32, 2 heads) with seeded weights, in eval mode: the
    reference model of the generation tests."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.OpenAIGPTConfig(vocab_size=vocab, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2)
    return transformers.OpenAIGPTLMHeadModel(config).eval()


def tiny_lm_fixtures(seed: int, vocab: int, n_positions: int):
    """A generation test module's two module-scoped fixtures: `hf`, tiny_lm(seed, vocab, n_positions), and `model`,
    gpt_fast's OpenAIGPTLMHeadModel copied from it, in eval mode. Use: `hf, model = tiny_lm_fixtures(3, VOCAB, 40)`."""

    @pytest.fixture(scope="module")
    def hf():
        return tiny_lm(seed, vocab, n_positions)

    @pytest.fixture(scope="module")
    def model(hf):
        from gpt_fast import OpenAIGPTLMHeadModel

        return OpenAIGPTLMHeadModel.from_transformers(hf).eval()

    return hf, model


def seeded_prompt(vocab: int, length: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    """(batch, length) token ids in [0, vocab)."""
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- pairs of models and how to run them ---------------------------------------------------------------------------
DOUBLE = "OpenAIGPTDoubleHeadsModel"
SEQ_CLS = "OpenAIGPTForSequenceClassification"
FUSED = pytest.param("fused", marks=pytest.mark.skipif(not has_kernel("flash_attention", "cpu"),
                                                       reason="no CPU flash_attention kernel built"))
BACKENDS = ["eager", "sdpa", FUSED]


def assert_speculative_sampling_is_plain(model, prompt, tolerance: float, **speculative) -> None:
    """Seeded sampling with speculative decoding (prompt lookup, an assistant) against plain sampling: the same
    draws, and per step the same scores and logits up to `tolerance` (a several-token pass rounds otherwise)."""
    kwargs = dict(max_new_tokens=30, do_sample=True, top_k=4, temperature=0.7, return_dict_in_generate=True,
                  output_scores=True, output_logits=True)
    expected = model.generate(prompt, seed=5, **kwargs)
    got = model.generate(prompt, seed=5, **speculative, **kwargs)
    torch.testing.assert_close(got.sequences, expected.sequences, rtol=0, atol=0)
    assert len(got.scores) == len(got.logits) == 30
    torch.testing.assert_close(got.scores, expected.scores, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(got.logits, expected.logits, rtol=tolerance, atol=tolerance)


def load_pair(head, backend, loader="from_transformers", tmp_path=None, **overrides):
    """(transformers model, gpt_fast model with the same weights), both in eval mode."""
    hf = hf_model(head, **overrides)
    cls = gpt_fast_class(head)
    if loader == "from_transformers":
        ours = cls.from_transformers(hf, attn_implementation=backend)
    else:
        hf.save_pretrained(tmp_path)
        ours = cls.from_pretrained(tmp_path, attn_implementation=backend)
    assert type(ours).__name__ == head
    return hf, ours.eval()


def shape_for(head, B=2, T=7):
    return (B, 3, T) if head == DOUBLE else (B, T)


def forward(model, *args, **kwargs):
    with torch.no_grad():
        return model(*args, **kwargs)


# -- a GPT-1-shaped checkpoint ------------------------------------------------------------------------------------
GPT1 = dict(vocab_size=40478, n_positions=512, n_embd=768, n_layer=12, n_head=12)


def gpt1_state_shapes(vocab_size, n_positions, n_embd, n_layer, n_head) -> dict[str, tuple[int, ...]]:
    """transformers' OpenAIGPTLMHeadModel checkpoint keys and shapes (the tied LM head is not stored)."""
    C = n_embd
    shapes = {"transformer.tokens_embed.weight": (vocab_size, C),
              "transformer.positions_embed.weight": (n_positions, C)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        shapes.update({
            p + "attn.c_attn.weight": (C, 3 * C), p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
            p + "mlp.c_fc.weight": (C, 4 * C), p + "mlp.c_fc.bias": (4 * C,),
            p + "mlp.c_proj.weight": (4 * C, C), p + "mlp.c_proj.bias": (C,),
            p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
        })
    return shapes


@pytest.fixture(scope="session")
def gpt1_folder(tmp_path_factory):
    """A GPT-1-shaped checkpoint (random fp32 weights, ~470 MB) in transformers' layout, written once per session."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("gpt1_random")
    g = torch.Generator().manual_seed(1234)
    state = {}
    for key, shape in gpt1_state_shapes(**GPT1).items():
        if key.endswith("ln_1.weight") or key.endswith("ln_2.weight"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.02 * torch.randn(shape, generator=g)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del state
    config = {"model_type": "openai-gpt", "architectures": ["OpenAIGPTLMHeadModel"], "afn": "gelu",
              "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "resid_pdrop": 0.1, "embd_pdrop": 0.1,
              "attn_pdrop": 0.1, "n_ctx": 512, **GPT1}
    (folder / "config.json").write_text(json.dumps(config))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # pytest keeps its last temporary folders; this one is large


# -- a module users put in place of a block's layer ---------------------------------------------------------------
class LoRA(torch.nn.Module):
    """base(x) + x A B: a low-rank update around a linear layer (Conv1D's weight is (in, out)), as PEFT's LoRA
    layers wrap the layer they replace."""

    def __init__(self, base: torch.nn.Module, rank: int = 2):
        super().__init__()
        self.base = base
        n_in, n_out = base.weight.shape
        generator = torch.Generator().manual_seed(n_in * 7 + n_out)
        self.A = torch.nn.Parameter(0.3 * torch.randn(n_in, rank, generator=generator).to(base.weight.dtype))
        self.B = torch.nn.Parameter(0.3 * torch.randn(rank, n_out, generator=generator).to(base.weight.dtype))

    def forward(self, x):
        return self.base(x) + x @ self.A @ self.B
