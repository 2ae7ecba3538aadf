"""The optimizer step inside backward (gpt_fast/training/optimizer_in_backward.py): the same parameters and AdamW
state as a plain step, on every backend, with checkpointing and autocast; no moment holds every gradient; the
trainer's option, its refusals, and a checkpoint shared with plain runs."""

import contextlib

import pytest
import torch
from training_helpers import tiny_config, write_bin

import gpt_fast
from gpt_fast.cli import main as cli
from gpt_fast.training import distributed as distributed_module
from gpt_fast.training import read_metrics, train
from gpt_fast.training.optimizer_in_backward import OptimizerInBackward

CONFIG = dict(vocab_size=97, n_positions=32, n_embd=24, n_layer=2, n_head=3, resid_pdrop=0.0, attn_pdrop=0.0,
              embd_pdrop=0.0)


def model_and_batch(backend: str):
    torch.manual_seed(0)
    model = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**CONFIG), attn_implementation=backend).train()
    ids = torch.randint(0, CONFIG["vocab_size"], (3, 13), generator=torch.Generator().manual_seed(1))
    return model, ids


def run_steps(backend: str, in_backward: bool, fused_adamw: bool, checkpointing: bool, bf16: bool, steps: int = 3):
    model, ids = model_and_batch(backend)
    if checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused_adamw,
                                  foreach=None if fused_adamw else False)
    hooks = OptimizerInBackward(model, optimizer) if in_backward else contextlib.nullcontext()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    losses = []
    with hooks:
        for _ in range(steps):
            with autocast:
                loss = model(ids, labels=ids, return_logits=False).loss
            loss.backward()
            if in_backward:
                assert all(p.grad is None for p in model.parameters())  # each freed after its update
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    return model, optimizer, losses


@pytest.mark.parametrize("backend", ["fused", "sdpa", "eager"])
@pytest.mark.parametrize("fused_adamw", [True, False], ids=["fused AdamW", "for-loop AdamW"])
@pytest.mark.parametrize("checkpointing, bf16", [(False, False), (True, False), (True, True)],
                         ids=["fp32", "checkpointing", "checkpointing bf16"])
def test_same_parameters_and_state_as_a_plain_step(backend, fused_adamw, checkpointing, bf16):
    """Each parameter gets the update a plain step gives it, bit for bit (AdamW's arithmetic is per element), over
    steps whose forwards see the earlier updates; the tied embedding / LM-head weight is updated once per step."""
    plain, plain_optimizer, plain_losses = run_steps(backend, False, fused_adamw, checkpointing, bf16)
    ours, optimizer, losses = run_steps(backend, True, fused_adamw, checkpointing, bf16)
    assert losses == plain_losses
    assert losses[-1] < losses[0]
    for (name, expected), actual in zip(plain.named_parameters(), ours.parameters(), strict=True):
        assert torch.equal(actual, expected), name
    for expected, actual in zip(plain.parameters(), ours.parameters(), strict=True):
        plain_state, state = plain_optimizer.state[expected], optimizer.state[actual]
        assert int(state["step"]) == int(plain_state["step"]) == 3
        assert torch.equal(state["exp_avg"], plain_state["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], plain_state["exp_avg_sq"])


def test_no_moment_holds_every_gradient():
    """Counted in a hook that runs before the update's (registered first) and in one after it: one gradient alive
    (the parameter's own), then none; a plain backward ends with every gradient alive."""
    model, ids = model_and_batch("fused")
    parameters = list(model.parameters())
    seen_before, seen_after = [], []
    first = [p.register_post_accumulate_grad_hook(
        lambda _: seen_before.append(sum(q.grad is not None for q in parameters))) for p in parameters]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    with OptimizerInBackward(model, optimizer):
        last = [p.register_post_accumulate_grad_hook(
            lambda _: seen_after.append(sum(q.grad is not None for q in parameters))) for p in parameters]
        model(ids, labels=ids).loss.backward()
    assert len(seen_before) == len(seen_after) == len(parameters)
    assert set(seen_before) == {1} and set(seen_after) == {0}
    for handle in first + last:
        handle.remove()
    model(ids, labels=ids).loss.backward()  # the hooks are gone: a plain backward keeps every gradient
    assert all(p.grad is not None for p in parameters)


def test_parameters_outside_the_optimizer_are_refused():
    model, _ = model_and_batch("fused")
    optimizer = torch.optim.AdamW([model.transformer.h[0].mlp.c_fc.weight], lr=1e-3)
    with pytest.raises(ValueError, match="does not hold these trained parameters: transformer"):
        OptimizerInBackward(model, optimizer)


@pytest.fixture
def data(tmp_path):
    return write_bin(tmp_path / "data.bin")


def test_trainer_option_gives_the_plain_loss_curve_and_resumes_its_checkpoint(data, tmp_path):
    """The same per-step losses as a plain run without clipping; a checkpoint of a plain run resumes with the
    optimizer in backward (the same AdamW state) on the same curve; metrics log no gradient norm."""
    plain = train(tiny_config(data, tmp_path / "plain", max_grad_norm=0, save_every=3)).losses
    ours = train(tiny_config(data, tmp_path / "ours", max_grad_norm=0, optimizer_in_backward=True)).losses
    assert list(ours.values()) == pytest.approx(list(plain.values()), rel=1e-6)
    assert [r["grad_norm"] for r in read_metrics(tmp_path / "ours/metrics.jsonl")] == [None] * 6
    resumed = train(tiny_config(data, tmp_path / "plain", max_grad_norm=0, optimizer_in_backward=True,
                                resume=str(tmp_path / "plain/checkpoints/step-0000003"))).losses
    assert resumed == pytest.approx({step: plain[step] for step in (4, 5, 6)}, rel=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (dict(), "set max_grad_norm=0"),
    (dict(max_grad_norm=0, grad_accum=2), "set grad_accum=1"),
    (dict(max_grad_norm=0, fp16=True), "fp16 loss scaling"),
])
def test_what_needs_every_gradient_is_refused(data, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(data, tmp_path, optimizer_in_backward=True, **overrides)


def test_refused_with_several_processes(data, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed_module, "start", lambda device: distributed_module.Processes(0, 2, False))
    with pytest.raises(ValueError, match="one process only"):
        train(tiny_config(data, tmp_path / "out", max_grad_norm=0, optimizer_in_backward=True))


def test_cli_option(data, tmp_path, capsys):
    config = tmp_path / "config.json"
    gpt_fast.OpenAIGPTConfig(**CONFIG).to_json_file(config)
    common = ["train", str(data), "--config", str(config), "--seq-len", "8", "--max-steps", "2", "--no-progress",
              "--optimizer-in-backward"]
    assert cli(common + ["--out", str(tmp_path / "a")]) != 0
    assert "max_grad_norm=0" in capsys.readouterr().err
    assert cli(common + ["--out", str(tmp_path / "b"), "--max-grad-norm", "0"]) == 0
    assert [r["grad_norm"] for r in read_metrics(tmp_path / "b/metrics.jsonl")] == [None, None]
