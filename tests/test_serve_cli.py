"""`gpt-fast serve` as a command: it serves a checkpoint folder over HTTP (a real subprocess on a free loopback
port), fails in one line on bad arguments or without the serve extra, and the core package imports no web
framework."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from serve_helpers import save_checkpoint, tiny_model_and_tokenizer

from gpt_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_answers_completions(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ckpt")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "gpt_fast.cli", "serve", "--model", str(checkpoint), "--port",
                               str(port), "--served-model-name", "tiny", "--api-key", "k", "--log-level", "warning",
                               "--prompt-lookup-num-tokens", "4", "--prefix-cache-size", "2"],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 3}
        reply = httpx.post(url + "/v1/completions", json=body, headers={"Authorization": "Bearer k"}, timeout=30)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
        assert httpx.post(url + "/v1/completions", json=body, timeout=30).status_code == 401
        repeating = {"model": "tiny", "prompt": "the cat sat on the mat. the cat sat on the mat. the cat sat on",
                     "max_tokens": 30, "temperature": 0}
        for _ in range(2):
            assert httpx.post(url + "/v1/completions", json=repeating, headers={"Authorization": "Bearer k"},
                              timeout=30).status_code == 200
        metrics = httpx.get(url + "/metrics", timeout=30).text.splitlines()

        def metric(name):
            return float(next(line for line in metrics if line.startswith(name)).split()[-1])

        assert metric("gpt_fast_spec_decode_draft_tokens_total") > 0  # --prompt-lookup-num-tokens reached the engine
        assert metric("gpt_fast_prefix_cache_hits_total") > 0  # and --prefix-cache-size: the second prompt's prefix
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def test_serve_loads_the_assistant_into_the_engine(tmp_path, monkeypatch):
    """--assistant-model and its settings reach the engine (serve_forever stubbed: no server is started)."""
    from gpt_fast.serving import launch

    model_folder, assistant_folder = save_checkpoint(tmp_path / "model"), tmp_path / "assistant"
    tiny_model_and_tokenizer(seed=1)[0].save_pretrained(assistant_folder)
    served = {}
    monkeypatch.setattr(launch, "serve_forever", lambda app, engine, *args, **kwargs: served.update(engine=engine))
    assert main(["serve", "--model", str(model_folder), "--assistant-model", str(assistant_folder),
                 "--num-assistant-tokens", "3", "--assistant-confidence-threshold", "0.25",
                 "--num-assistant-tokens-schedule", "heuristic", "--dtype", "bfloat16",
                 "--log-level", "warning"]) == 0
    drafting = served["engine"].speculation.drafting
    assert (drafting.settings.num_tokens, drafting.settings.confidence_threshold) == (3, 0.25)
    assert drafting.settings.schedule == "heuristic"
    assert drafting.assistant.dtype == served["engine"].model.dtype == torch.bfloat16
    assert drafting.assistant.transformer.h[0].attn.c_attn.weight.float().ne(0).any()  # its own weights, loaded


def test_serve_without_the_extra_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    assert main(["serve", "--model", "anything"]) == 2
    assert "pip install gpt_fast[serve]" in capsys.readouterr().err


@pytest.mark.parametrize("args, match", [(["--model", "/no/such/folder"], "no such model folder"),
                                         (["--model", ".", "--max-batch", "0"], "must be a positive integer"),
                                         (["--model", ".", "--prompt-lookup-num-tokens", "0"], "positive integer"),
                                         (["--model", ".", "--prefix-cache-size", "-1"], "non-negative integer"),
                                         (["--model", ".", "--num-assistant-tokens", "2"], "needs --assistant-model"),
                                         (["--model", ".", "--num-assistant-tokens-schedule", "heuristic"],
                                          "needs --assistant-model"),
                                         (["--model", ".", "--assistant-confidence-threshold", "0.2"],
                                          "needs --assistant-model"),
                                         (["--model", ".", "--assistant-model", ".",
                                           "--assistant-confidence-threshold", "2"], "a number in [0, 1]"),
                                         (["--model", ".", "--assistant-model", ".", "--prompt-lookup-num-tokens",
                                           "2"], "not both"),
                                         (["--model", ".", "--port", "70000"], "--port")])
def test_bad_serve_arguments_are_one_line_errors(args, match, capsys):
    assert main(["serve", *args]) in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gpt-fast: error:") and match in err[-1]


def test_the_core_package_and_the_engine_import_no_web_framework():
    code = ("import sys, gpt_fast, gpt_fast.serving, gpt_fast.cli; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
