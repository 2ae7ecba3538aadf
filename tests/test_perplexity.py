"""gpt_fast.perplexity (gpt_fast/evaluation/perplexity.py) and `gpt-fast eval`: against a per-token reference in
float64 (every scored token's log-probability from the model's own logits, window by window), against transformers'
guide loop on the same weights, in bf16 within a multiple of PyTorch's own error, over awkward lengths, strides and
batch sizes; bad arguments are errors; the command prints and writes the same result."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel, OpenAIGPTTokenizerFast, perplexity
from gpt_fast.cli import main
from gpt_fast.evaluation import windows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_perplexity  # noqa: E402  (transformers' guide loop, which the benchmark times)

VOCAB, POSITIONS = 61, 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = OpenAIGPTConfig(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=24, n_layer=2, n_head=3,
                             initializer_range=0.3)  # a peaked distribution, far from uniform
    return OpenAIGPTLMHeadModel(config).eval()


def stream(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed))


def reference_nll(model, tokens: torch.Tensor, seq_len: int, stride: int) -> tuple[float, int]:
    """The mean negative log-likelihood and count of the scored tokens, one window and one token at a time, from
    the float64 model's logits: window [begin, end) scores the tokens after the last one an earlier window scored,
    never its own first."""
    wide = copy.deepcopy(model).double()
    total, count, scored_to = 0.0, 0, 0
    for begin in range(0, len(tokens), stride):
        end = min(begin + seq_len, len(tokens))
        with torch.no_grad():
            logprobs = torch.log_softmax(wide(tokens[None, begin:end]).logits[0], dim=-1)  # (T, V)
        for j in range(max(scored_to, begin + 1), end):
            total -= float(logprobs[j - begin - 1, tokens[j]])
            count += 1
        scored_to = end
        if end == len(tokens):
            break
    return total / count, count


@pytest.mark.parametrize("length, seq_len, stride, batch_size", [
    (97, 16, 16, 8), (97, 16, 5, 3), (97, 16, 1, 8), (2, 16, 16, 1), (17, 16, 16, 2), (33, 7, 4, 1), (513, 16, 11, 8),
])
def test_matches_the_per_token_reference(model, length, seq_len, stride, batch_size):
    tokens = stream(length)
    result = perplexity(model, tokens, seq_len, stride, batch_size)
    nll, count = reference_nll(model, tokens, seq_len, stride)
    assert result.tokens == count
    assert result.nll == pytest.approx(nll, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll), rel=1e-5)
    assert result.windows == len(windows(length, seq_len, stride))


def test_windows_score_every_token_once_when_they_overlap():
    for length, seq_len, stride in ((97, 16, 5), (100, 10, 9), (10, 10, 1), (64, 16, 16)):
        seen = []
        for begin, end, scored in windows(length, seq_len, stride):
            assert 1 <= scored <= end - begin - 1 or (begin == 0 and scored == end - 1)
            seen += range(end - scored, end)
        expected = [j for j in range(1, length) if stride < seq_len or j % seq_len]  # disjoint: not a window's first
        assert seen == expected


def test_equals_transformers_guide_loop_on_the_same_weights(model):
    """transformers' "Perplexity of fixed-length models" loop (the benchmark's copy of it; disjoint windows, where its
    token count is exact), on transformers' own OpenAIGPTLMHeadModel with these weights."""
    transformers = pytest.importorskip("transformers")
    theirs = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**model.config.to_dict())).eval()
    theirs.load_state_dict(model.state_dict(), strict=False)
    tokens = stream(200, seed=3)
    expected, counted = bench_perplexity.transformers_loop(theirs, tokens, POSITIONS, POSITIONS)
    ours = perplexity(model, tokens)
    assert ours.tokens == counted
    assert ours.perplexity == pytest.approx(expected, rel=1e-5)


def test_bfloat16_within_a_multiple_of_pytorchs_own_error(model):
    """The bf16 model's perplexity (fused LM head + loss) against the float64 reference, within 3x the error of
    PyTorch's own bf16 path (the bf16 model's logits, upcast, window by window)."""
    tokens = stream(300, seed=5)
    exact, _ = reference_nll(model, tokens, POSITIONS, 8)
    half = copy.deepcopy(model).to(torch.bfloat16)
    ours = perplexity(half, tokens, stride=8).nll
    total, count = 0.0, 0
    for begin, end, scored in windows(len(tokens), POSITIONS, 8):
        with torch.no_grad():
            logprobs = torch.log_softmax(half(tokens[None, begin:end]).logits[0].float(), dim=-1)
        for j in range(end - scored, end):
            total -= float(logprobs[j - begin - 1, tokens[j]])
            count += 1
    torch_error = abs(total / count - exact)
    assert abs(ours - exact) <= 3 * torch_error + 1e-3


def test_the_models_mode_is_restored_and_inputs_take_any_form(model):
    tokens = stream(40)
    model.train()
    try:
        first = perplexity(model, tokens)
        assert model.training
    finally:
        model.eval()
    assert perplexity(model, tokens.tolist()).nll == pytest.approx(first.nll, rel=1e-6)
    assert perplexity(model, tokens.numpy().astype(np.uint16)).nll == pytest.approx(first.nll, rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(seq_len=POSITIONS + 1), "seq_len must be an int >= 1 and at most 16"),
    (dict(seq_len=0), "seq_len must be"),
    (dict(seq_len=8, stride=9), "stride must be an int >= 1 and at most 8"),
    (dict(stride=0), "stride must be"),
    (dict(batch_size=0), "batch_size must be"),
    (dict(batch_size=True), "batch_size must be"),
])
def test_bad_arguments_are_errors(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        perplexity(model, stream(40), **kwargs)


@pytest.mark.parametrize("tokens, match", [([5], "at least 2 tokens"), ([], "at least 2 tokens"),
                                           ([1, VOCAB], r"token ids must be in \[0, 61\)"),
                                           ([-1, 2], r"token ids must be in \[0, 61\)")])
def test_bad_streams_are_errors(model, tokens, match):
    with pytest.raises(ValueError, match=match):
        perplexity(model, tokens)


@pytest.mark.parametrize("tokens", [torch.tensor([1.5, 2.0, 3.0]), np.array([1.0, 2.0]), torch.tensor([True, False])])
def test_ids_that_are_not_integers_are_a_type_error(model, tokens):
    with pytest.raises(TypeError, match="integer token ids"):
        perplexity(model, tokens)


# -- gpt-fast eval -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random model with GPT-1's packaged tokenizer, saved with it."""
    folder = tmp_path_factory.mktemp("eval-ckpt")
    tokenizer = OpenAIGPTTokenizerFast.from_pretrained("openai-gpt")
    torch.manual_seed(1)
    config = OpenAIGPTConfig(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    OpenAIGPTLMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_eval_command_on_text_and_token_files(checkpoint, tmp_path, capsys):
    text = tmp_path / "held-out.txt"
    text.write_text("the cat sat on the mat, and the dog sat on the log. " * 12)
    code = main(["eval", str(text), "--model", str(checkpoint), "--stride", "24", "--json", str(tmp_path / "r.json"),
                 "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    written = json.loads((tmp_path / "r.json").read_text())
    model = OpenAIGPTLMHeadModel.from_pretrained(checkpoint)
    ids = OpenAIGPTTokenizerFast.from_pretrained(checkpoint)(text.read_text())["input_ids"]
    expected = perplexity(model, ids, stride=24)
    assert written["tokens"] == expected.tokens and written["perplexity"] == pytest.approx(expected.perplexity)
    assert (written["seq_len"], written["stride"], written["windows"]) == (32, 24, expected.windows)
    assert out.startswith(f"perplexity {expected.perplexity:.4g} ") and f"{expected.tokens:,} scored tokens" in out
    # the same ids as a .bin file of uint16 (no tokenizer needed), cut with --max-tokens
    binary = tmp_path / "ids.bin"
    np.asarray(ids, dtype=np.uint16).tofile(binary)
    assert main(["eval", str(binary), "--model", str(checkpoint), "--max-tokens", "50", "--no-progress"]) == 0
    assert f"{perplexity(model, ids[:50]).perplexity:.4g}" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["/no/such/file.txt"], "no such file or folder"),
    (["DATA", "--seq-len", "33"], "longer than the model's n_positions (32)"),
    (["DATA", "--stride", "0"], "must be a positive integer"),
    (["DATA", "--seq-len", "8", "--stride", "9"], "stride must be an int >= 1 and at most 8"),
])
def test_eval_errors_are_one_line(checkpoint, tmp_path, capsys, args, match):
    data = tmp_path / "d.txt"
    data.write_text("some held-out text to score")
    args = [str(data) if arg == "DATA" else arg for arg in args]
    assert main(["eval", *args, "--model", str(checkpoint), "--no-progress"]) in (1, 2)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("gpt-fast: error:")]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in err
