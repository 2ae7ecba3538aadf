"""The trainer (gpt_fast/training) and `gpt-fast train`: resumable runs, outputs that gpt_fast and transformers
load, the schedule, gradient accumulation, the fused loss, bad input. Tiny models, a few steps each."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from training_helpers import TINY_MODEL, tiny_config, write_bin

import gpt_fast
from gpt_fast.cli import main as cli
from gpt_fast.training import TokenRows, TrainingConfig, read_metrics, train
from gpt_fast.training.schedule import warmup_cosine


@pytest.fixture
def data(tmp_path):
    return write_bin(tmp_path / "data.bin")


def test_resume_gives_the_same_loss_curve(data, tmp_path):
    """With dropout on (RNG state restored), accumulation, evaluation: steps 4-6 after resuming at step 3 are
    those of the uninterrupted run, bit for bit."""
    overrides = dict(config_overrides={"resid_pdrop": 0.1, "attn_pdrop": 0.1, "embd_pdrop": 0.1}, grad_accum=2,
                     save_every=3, eval_fraction=0.2, eval_every=2)
    whole = train(tiny_config(data, tmp_path / "whole", **overrides))
    assert whole.losses[6] < whole.losses[1]  # it learns
    resumed = train(tiny_config(data, tmp_path / "whole", resume=str(tmp_path / "whole/checkpoints/step-0000003"),
                                **overrides))
    assert list(resumed.losses) == [4, 5, 6]
    assert resumed.losses == {step: whole.losses[step] for step in (4, 5, 6)}
    assert resumed.eval_losses == {step: whole.eval_losses[step] for step in (4, 6)}
    again = train(tiny_config(data, tmp_path / "whole", resume="latest", **overrides))  # step 6: nothing left
    assert again.losses == {}


def test_output_loads_in_gpt_fast_and_transformers(data, tmp_path):
    transformers = pytest.importorskip("transformers")
    train(tiny_config(data, tmp_path / "out"))
    ours = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "out").eval()
    theirs = transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor([[1, 8, 15, 22, 29]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=1e-4, atol=1e-4)
    records = read_metrics(tmp_path / "out/metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(r["tokens_per_s"] > 0 and r["tokens"] == r["step"] * 4 * 8 for r in records)


def test_fine_tuning_starts_from_the_checkpoint(data, tmp_path):
    torch.manual_seed(1)
    start = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**TINY_MODEL))
    start.save_pretrained(tmp_path / "start")
    config = tiny_config(data, tmp_path / "tuned", model=str(tmp_path / "start"), model_config=None, max_steps=2)
    first_loss = train(config).losses[1]
    inputs, targets = TokenRows(np.fromfile(data, dtype=np.uint16).astype(np.int64), 8).batch(0, 4)
    with torch.no_grad():
        expected = start(inputs, labels=targets, shift_labels=targets).loss.item()
    assert first_loss == pytest.approx(expected, rel=1e-6)


def test_gradient_accumulation_and_the_fused_loss_change_nothing(data, tmp_path):
    plain = train(tiny_config(data, tmp_path / "a")).losses
    accumulated = train(tiny_config(data, tmp_path / "b", batch_size=2, grad_accum=2)).losses
    unfused = train(tiny_config(data, tmp_path / "c", fused_loss=False)).losses
    assert list(accumulated.values()) == pytest.approx(list(plain.values()), rel=1e-5)
    assert list(unfused.values()) == pytest.approx(list(plain.values()), rel=1e-5)


def test_bf16_autocast_trains(data, tmp_path):
    losses = train(tiny_config(data, tmp_path / "bf16", bf16=True, attn_implementation="fused")).losses
    reference = train(tiny_config(data, tmp_path / "fp32")).losses
    assert list(losses.values()) == pytest.approx(list(reference.values()), rel=3e-2)


def test_fp16_with_loss_scaling_trains_and_resumes(data, tmp_path):
    """float16 autocast with a GradScaler (on CPU here; the same code serves CUDA): close to fp32, the first step's
    overflow at the initial scale 2^16 is skipped and the scale halved, and a resumed run restores the scaler (with a
    fresh one step 4 would overflow again) so it continues bit for bit."""
    overrides = dict(fp16=True, save_every=3)
    losses = train(tiny_config(data, tmp_path / "fp16", **overrides)).losses
    reference = train(tiny_config(data, tmp_path / "fp32")).losses
    assert list(losses.values()) == pytest.approx(list(reference.values()), rel=3e-2)
    state = torch.load(tmp_path / "fp16/checkpoints/step-0000003/trainer_state.pt", weights_only=False)
    assert state["scaler"]["scale"] == 2.0**15
    resumed = train(tiny_config(data, tmp_path / "fp16", resume=str(tmp_path / "fp16/checkpoints/step-0000003"),
                                **overrides)).losses
    assert resumed == {step: losses[step] for step in (4, 5, 6)}


def test_schedule():
    assert [round(warmup_cosine(s, 2, 10, 0.1), 6) for s in (0, 1, 2, 6, 10, 20)] == [
        round(1 / 3, 6), round(2 / 3, 6), 1.0, round(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)), 6), 0.1, 0.1]


def test_rows_follow_the_position_only():
    tokens = np.arange(100)
    rows = TokenRows(tokens, seq_len=9, seed=3)
    inputs, targets = rows.batch(0, rows.num_rows)
    assert sorted(inputs[:, 0].tolist()) == list(range(0, 99, 9))  # an epoch reads every row once
    assert torch.equal(targets, inputs + 1)
    again = TokenRows(tokens, seq_len=9, seed=3)
    assert torch.equal(again.batch(13, 5)[0], torch.cat([rows.batch(13, 2)[0], rows.batch(15, 3)[0]]))


def test_cli_on_a_text_folder(tmp_path):
    (tmp_path / "corpus/sub").mkdir(parents=True)
    (tmp_path / "corpus/a.txt").write_text("the cat sat on the mat . " * 40)
    (tmp_path / "corpus/sub/b.txt").write_text("a dog ran in the park . " * 40)
    (tmp_path / "config.json").write_text(json.dumps({"n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2}))
    out = tmp_path / "out"
    code = cli(["train", str(tmp_path / "corpus"), "--out", str(out), "--config", str(tmp_path / "config.json"),
                "--set", "resid_pdrop=0.0", "--seq-len", "8", "--batch-size", "2", "--max-steps", "3",
                "--eval-fraction", "0.2", "--no-progress"])
    assert code == 0
    model = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(out)
    assert model.config.n_layer == 1 and model.config.resid_pdrop == 0.0
    tokenizer = gpt_fast.OpenAIGPTTokenizerFast.from_pretrained(out)  # saved with the model
    assert len(tokenizer) == model.config.vocab_size == 40478
    assert any("eval_perplexity" in r for r in read_metrics(out / "metrics.jsonl"))


def test_loss_curve_png(data, tmp_path):
    pytest.importorskip("matplotlib")
    train(tiny_config(data, tmp_path / "out", plot=True, max_steps=2))
    assert (tmp_path / "out/loss.png").stat().st_size > 0


def test_plot_without_matplotlib_is_refused_before_training(data, tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else
                        real_find_spec(name, *a))  # as on a machine without the plot extra
    with pytest.raises(ImportError, match="pip install gpt_fast\\[plot\\]"):
        tiny_config(data, tmp_path, plot=True)


@pytest.mark.parametrize("overrides, error, message", [
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(model="x"), ValueError, "either model"),
    (dict(model_config=None), ValueError, "either model"),
    (dict(learning_rate=0.0), ValueError, "learning_rate"),
    (dict(eval_fraction=1.0), ValueError, "eval_fraction"),
    (dict(parallel="zero"), ValueError, "parallel must be"),
    (dict(bf16=True, fp16=True), ValueError, "exclude each other"),
    (dict(fp16=True, parallel="fsdp"), ValueError, "fp16 with parallel='fsdp'"),
    (dict(keep_freed_memory="yes"), ValueError, "keep_freed_memory must be"),
])
def test_bad_config(data, tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        tiny_config(data, tmp_path, **overrides)


def test_bad_data(data, tmp_path):
    with pytest.raises(ValueError, match="exceeds the model's n_positions"):
        train(tiny_config(data, tmp_path / "a", seq_len=32))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        train(tiny_config(data, tmp_path / "b", config_overrides={"vocab_size": 20}))
    (tmp_path / "odd.bin").write_bytes(b"abc")
    with pytest.raises(ValueError, match="odd number of bytes"):
        train(tiny_config(tmp_path / "odd.bin", tmp_path / "c"))
    np.arange(5, dtype=np.uint16).tofile(tmp_path / "short.bin")
    with pytest.raises(ValueError, match="needs 9"):
        train(tiny_config(tmp_path / "short.bin", tmp_path / "d"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        train(tiny_config(tmp_path / "missing.txt", tmp_path / "e"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_config(data, tmp_path / "f", resume="latest"))


def test_cli_usage_errors(capsys):
    assert cli(["train", "x.bin", "--out", "o"]) == 2
    assert "--model" in capsys.readouterr().err
    assert cli(["train", "x.bin", "--out", "o", "--config", "gpt1", "--set", "novalue"]) == 2
    assert TrainingConfig(train_data="a.bin", output_dir="o", model_config="gpt1").train_data == ["a.bin"]
