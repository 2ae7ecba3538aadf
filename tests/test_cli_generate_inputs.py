"""gpt-fast generate's inputs: hub ids, binary stdin, and argument errors reported before any output.

Most cases run the CLI in-process (gpt_fast.cli.main) with huggingface_hub replaced by a stand-in (no network);
binary stdin runs as a subprocess so that the bytes really come through a pipe.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import gpt_fast
from gpt_fast.checkpoints.hub import looks_like_hub_id
from gpt_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "tiny-org/tiny-gpt"  # not one of the GPT-1 names, whose tokenizer ships in the package
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = ["<unk>", *LETTERS, *(c + "</w>" for c in LETTERS), "th", "the</w>"]
MERGES = [("t", "h"), ("th", "e</w>")]


def random_checkpoint(folder: Path, seed: int, n_embd: int, n_layer: int) -> Path:
    """A random model of the tiny vocabulary saved in folder."""
    torch.manual_seed(seed)
    config = gpt_fast.OpenAIGPTConfig(vocab_size=len(VOCAB), n_positions=64, n_embd=n_embd, n_layer=n_layer, n_head=2)
    gpt_fast.OpenAIGPTLMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random checkpoint with a tiny BPE tokenizer in one folder."""
    folder = random_checkpoint(tmp_path_factory.mktemp("tiny-gpt"), 3, 32, 2)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(VOCAB)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
    return folder


def run_main(capsys, *args, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8"))
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("gpt-fast: error:")]
    assert "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


@pytest.mark.parametrize("name, expected", [
    ("openai-community/openai-gpt", True), ("openai-gpt", True), ("org/model.v1_2", True),
    ("./openai-gpt", False), ("/abs/path", False), ("~/models/x", False), ("a/b/c", False),
    ("org/", False), ("/name", False), ("org/-bad", False), ("org/a--b", False), ("org/a..b", False),
    ("C:\\models\\gpt", False), ("", False), ("org/" + "x" * 97, False),
])
def test_looks_like_hub_id(name, expected):
    assert looks_like_hub_id(name) is expected


def test_a_hub_id_goes_to_the_hub(checkpoint, capsys, monkeypatch, tmp_path):
    """`--model org/name` that is not a folder here is fetched through huggingface_hub (a stand-in here)."""
    monkeypatch.chdir(tmp_path)  # no folder called tiny-org here
    asked = []

    def snapshot_download(repo_id, allow_patterns=None):
        asked.append(repo_id)
        return str(checkpoint)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    code, out, err = run_main(capsys, "generate", "the", "--model", HUB_ID, "--max-new-tokens", "3")
    assert code == 0, err
    assert out.startswith("the") and asked and set(asked) == {HUB_ID}


def test_a_hub_id_without_huggingface_hub_says_what_to_install(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    code, out, err = run_main(capsys, "generate", "the", "--model", HUB_ID)
    assert code == 1 and out == ""
    line = one_error_line(err)
    assert HUB_ID in line and "pip install gpt_fast[hub]" in line


@pytest.mark.parametrize("model", ["./no-such-folder", "/no/such/folder", "a/b/c"])
def test_a_missing_path_is_not_sent_to_the_hub(model, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    asked = []
    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        types.SimpleNamespace(snapshot_download=lambda repo_id, **kw: asked.append(repo_id)))
    code, out, err = run_main(capsys, "generate", "the", "--model", model)
    assert code == 1 and asked == []
    assert "no such model folder" in one_error_line(err)


@pytest.mark.parametrize("flags, match", [
    (["--do-sample", "--temperature", "-1"], "temperature"),
    (["--do-sample", "--top-p", "2"], "top_p"),
    (["--do-sample", "--min-p", "1.5"], "min_p"),
    (["--do-sample", "--typical-p", "0"], "typical_p"),
    (["--num-return-sequences", "2", "--no-stream"], "do_sample"),
    (["--max-new-tokens", "80"], "n_positions"),
    (["--eos-token-id", "999"], "eos_token_id"),
    (["--prompt-lookup-num-tokens", "3", "--do-sample", "--num-return-sequences", "2"], "batch size 1"),
])
def test_argument_errors_come_before_any_output(checkpoint, flags, match, capsys, monkeypatch):
    """The prompt used to be echoed to stdout before generate() rejected its arguments."""
    code, out, err = run_main(capsys, "generate", "--model", str(checkpoint), *flags, stdin="the the\n",
                              monkeypatch=monkeypatch)
    assert code == 1
    assert out == "", out
    assert match in one_error_line(err)


def test_stdin_prompt_is_still_echoed_then_continued(checkpoint, capsys, monkeypatch):
    code, out, err = run_main(capsys, "generate", "--model", str(checkpoint), "--max-new-tokens", "4",
                              stdin="the the\n", monkeypatch=monkeypatch)
    assert code == 0, err
    code, plain, err = run_main(capsys, "generate", "the the", "--model", str(checkpoint), "--max-new-tokens", "4",
                                "--no-stream")
    assert code == 0, err
    assert out.startswith("the the") and out == plain


def test_prompt_lookup_prints_the_plain_text(checkpoint, capsys, monkeypatch):
    from gpt_fast.generation.decoder import IncrementalDecoder

    passes = []
    extend = IncrementalDecoder.extend
    monkeypatch.setattr(IncrementalDecoder, "extend", lambda self, tokens: passes.append(1) or extend(self, tokens))
    args = ("generate", "the the the", "--model", str(checkpoint), "--max-new-tokens", "30", "--no-stream")
    code, plain, err = run_main(capsys, *args)
    assert code == 0, err
    assert not passes
    code, out, err = run_main(capsys, *args, "--prompt-lookup-num-tokens", "4")
    assert code == 0, err
    assert passes and out == plain


@pytest.fixture(scope="module")
def assistant_checkpoint(tmp_path_factory):
    """A smaller random model with the checkpoint's vocabulary (weights only: the tokenizer is the model's)."""
    return random_checkpoint(tmp_path_factory.mktemp("tiny-assistant"), 4, 16, 1)


def test_assistant_model_prints_the_plain_text(checkpoint, assistant_checkpoint, capsys, monkeypatch):
    from gpt_fast.generation.assistant import AssistantDrafter

    drafted = []
    draft = AssistantDrafter.draft
    monkeypatch.setattr(AssistantDrafter, "draft", lambda self, *a: drafted.append(self.length) or draft(self, *a))
    args = ("generate", "the the the", "--model", str(checkpoint), "--max-new-tokens", "30", "--no-stream")
    code, plain, err = run_main(capsys, *args)
    assert code == 0, err
    code, out, err = run_main(capsys, *args, "--assistant-model", str(assistant_checkpoint),
                              "--num-assistant-tokens", "3")
    assert code == 0, err
    assert drafted and set(drafted) == {3} and out == plain
    drafted.clear()
    settings = []
    update = AssistantDrafter.update
    monkeypatch.setattr(AssistantDrafter, "update", lambda self, *a: settings.append(self.settings) or update(self, *a))
    code, out, err = run_main(capsys, *args, "--assistant-model", str(assistant_checkpoint),
                              "--num-assistant-tokens", "2", "--assistant-confidence-threshold", "0",
                              "--num-assistant-tokens-schedule", "heuristic_transient")
    assert code == 0, err
    assert out == plain and {(s.num_tokens, s.confidence_threshold, s.schedule) for s in settings} == {
        (2, 0.0, "heuristic_transient")}


@pytest.mark.parametrize("flags, match", [
    (["--num-assistant-tokens", "3"], "needs --assistant-model"),
    (["--assistant-confidence-threshold", "0.3"], "needs --assistant-model"),
    (["--num-assistant-tokens-schedule", "heuristic"], "needs --assistant-model"),
    (["--assistant-model", "ASSISTANT", "--prompt-lookup-num-tokens", "2"], "not both"),
    (["--assistant-model", "ASSISTANT", "--assistant-confidence-threshold", "1.5"], "a number in [0, 1]"),
    (["--assistant-model", "ASSISTANT", "--do-sample", "--num-return-sequences", "2"], "batch size 1"),
])
def test_assistant_model_errors(checkpoint, assistant_checkpoint, flags, match, capsys):
    flags = [str(assistant_checkpoint) if flag == "ASSISTANT" else flag for flag in flags]
    code, out, err = run_main(capsys, "generate", "the", "--model", str(checkpoint), *flags)
    assert code in (1, 2) and out == ""
    assert match in one_error_line(err)


@pytest.mark.parametrize("data, match", [
    (b"\xff\xfe\x00binary\x89PNG", "stdin is not UTF-8 text (byte 0xff at offset 0)"),
    (b"the \x00\x01\x02", "stdin holds binary data (a NUL byte at offset 4)"),
])
def test_binary_stdin_is_a_one_line_error(checkpoint, data, match):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "gpt_fast.cli", "generate", "--model", str(checkpoint)],
                            input=data, capture_output=True, cwd=ROOT, env=env, timeout=240)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert result.stdout == b""
    assert match in one_error_line(err)
