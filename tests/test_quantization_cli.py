"""--quantization in the CLI (convert, generate, bench, serve), the benchmark's byte and roofline figures for a
quantized model, and the serving engine on a quantized model."""

from __future__ import annotations

import json

import pytest
import torch
from serve_helpers import collect, save_checkpoint, tiny_model_and_tokenizer
from test_pipeline_cli import TINY_MERGES, TINY_VOCAB, assert_one_line_error, run_cli, run_cli_here, run_clis

import gpt_fast
from gpt_fast.cli import benchmark, main
from gpt_fast.quantization import QuantizedLinear
from gpt_fast.serving import Engine, SamplingParams


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny unquantized checkpoint (width 64: int4 groups of 32 and 64 divide it) with a BPE tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-gpt")
    torch.manual_seed(1)
    config = gpt_fast.OpenAIGPTConfig(vocab_size=len(TINY_VOCAB), n_positions=24, n_embd=64, n_layer=2, n_head=2,
                                      initializer_range=0.2)
    gpt_fast.OpenAIGPTLMHeadModel(config).save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(TINY_VOCAB)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in TINY_MERGES) + "\n")
    return folder


@pytest.mark.slow  # CLI subprocesses / a benchmark run / inductor: tens of seconds on 2 shared cores
def test_convert_then_generate(checkpoint, tmp_path):
    destination = tmp_path / "int4"
    result = run_cli("convert", str(checkpoint), str(destination), "--quantization", "int4", "--group-size", "64")
    assert result.returncode == 0, result.stderr
    assert "int4" in result.stderr and (destination / "vocab.json").is_file()
    entry = json.loads((destination / "config.json").read_text())["quantization_config"]
    assert entry["bits"] == 4 and entry["group_size"] == 64
    assert gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(destination).quantization.group_size == 64
    args = ("generate", "the future is", "--max-new-tokens", "6", "--no-stream")
    from_flag, from_saved, plain, sampled = run_clis(
        (*args, "--model", str(checkpoint), "--quantization", "int4", "--group-size", "64"),
        (*args, "--model", str(destination)), (*args, "--model", str(checkpoint)),
        (*args, "--model", str(destination), "--do-sample", "--seed", "1", "--num-return-sequences", "2"))
    assert from_flag.returncode == 0 and from_saved.returncode == 0, from_flag.stderr + from_saved.stderr
    assert "int4" in from_flag.stderr and "int4" in from_saved.stderr
    assert from_flag.stdout == from_saved.stdout and from_flag.stdout.startswith("the future is")
    assert plain.returncode == 0 and "int4" not in plain.stderr
    assert sampled.returncode == 0 and sampled.stdout.count("=== sequence") == 2, sampled.stderr


@pytest.mark.parametrize("scheme", ["int4-a8", "int8-a8"])
def test_convert_a8_then_generate(checkpoint, tmp_path, scheme):
    destination = tmp_path / scheme
    result = run_cli("convert", str(checkpoint), str(destination), "--quantization", scheme, "--group-size", "32")
    assert result.returncode == 0, result.stderr
    entry = json.loads((destination / "config.json").read_text())["quantization_config"]
    assert entry["bits"] == int(scheme[3]) and entry["group_size"] == 32 and entry["activation_bits"] == 8
    generated = run_cli("generate", "the future is", "--max-new-tokens", "6", "--no-stream", "--model",
                        str(destination))
    assert generated.returncode == 0 and scheme in generated.stderr, generated.stderr
    assert generated.stdout.startswith("the future is")


@pytest.mark.slow  # CLI subprocesses: tens of seconds on 2 shared cores
def test_convert_with_gptq_calibration(checkpoint, tmp_path):
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("the future is here . " * 40, encoding="utf-8")
    destination, plain = tmp_path / "gptq", tmp_path / "rtn"
    folder = tmp_path / "texts"  # a folder: its *.txt files, in name order
    folder.mkdir()
    (folder / "a.txt").write_text("the future is here . " * 20, encoding="utf-8")
    result, rtn_result, from_folder, int8 = run_clis(
        ("convert", str(checkpoint), str(destination), "--quantization", "int4", "--group-size", "64",
         "--calibration", str(calibration), "--calibration-windows", "3"),
        ("convert", str(checkpoint), str(plain), "--quantization", "int4", "--group-size", "64"),
        ("convert", str(checkpoint), str(tmp_path / "gptq2"), "--quantization", "int4", "--calibration", str(folder)),
        ("convert", str(checkpoint), str(tmp_path / "int8"), "--quantization", "int8", "--calibration",
         str(calibration), "--calibration-windows", "2"))
    assert result.returncode == 0, result.stderr
    assert "GPTQ int4 (group 64) from 3 calibration windows of 24 tokens" in result.stderr
    assert rtn_result.returncode == 0, rtn_result.stderr
    gptq = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(destination)
    rtn = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(plain)
    assert gptq.quantization == rtn.quantization  # the same format and config entry: only the codes differ
    assert not torch.equal(gptq.transformer.h[0].mlp.c_fc.qweight, rtn.transformer.h[0].mlp.c_fc.qweight)
    assert from_folder.returncode == 0 and "calibration windows" in from_folder.stderr, from_folder.stderr
    assert int8.returncode == 0 and "GPTQ int8 from 2 calibration windows" in int8.stderr, int8.stderr
    assert gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "int8").quantization.bits == 8
    assert_one_line_error(run_cli_here("convert", str(checkpoint), str(tmp_path / "x"), "--calibration",
                                       str(calibration)), 2, "pass --quantization int4 or int8")
    assert_one_line_error(run_cli_here("convert", str(checkpoint), str(tmp_path / "x"), "--quantization", "int4",
                                       "--calibration", str(tmp_path / "missing.txt")), 1, "no such calibration file")
    assert_one_line_error(run_cli_here("convert", str(checkpoint), str(tmp_path / "x"), "--quantization", "int4",
                                       "--calibration", str(calibration), "--calibration-windows", "0"), 2,
                          "positive integer")
    assert not (tmp_path / "x").exists()  # each refused before any work


def test_cli_bad_quantization_arguments(checkpoint, tmp_path):
    assert_one_line_error(run_cli_here("generate", "the", "--model", str(checkpoint), "--quantization", "int3"), 2,
                          "invalid choice")
    assert_one_line_error(run_cli_here("generate", "the", "--model", str(checkpoint), "--quantization", "int4",
                                       "--group-size", "48"), 1, "does not divide")
    assert_one_line_error(run_cli_here("convert", str(checkpoint), str(tmp_path / "x"), "--quantization", "int4",
                                       "--group-size", "0"), 2, "positive integer")
    assert_one_line_error(run_cli_here("bench", "--quantization", "int8,int3"), 2, "--quantization takes")
    assert_one_line_error(run_cli_here("bench", "--quantization", "int4", "--group-size", "40"), 2, "divide 768")
    for command in ("generate", "serve", "convert"):
        assert "--quantization" in run_cli_here(command, "--help").stdout


def expected_weight_bytes(model) -> int:
    """Weight bytes a decode step reads, counted from the state dict: every float and quantized tensor, one row of
    the position table and, when the LM head is a quantized copy, one row of the token embedding."""
    state = model.state_dict()
    total = sum(t.numel() * t.element_size() for t in state.values())
    if "lm_head.weight" in state:  # tied: one tensor
        total -= state["lm_head.weight"].numel() * state["lm_head.weight"].element_size()
    for key in ("transformer.positions_embed.weight",) + (("transformer.tokens_embed.weight",)
                                                          if "lm_head.qweight" in state else ()):
        table = state[key]
        total -= (table.shape[0] - 1) * table.shape[1] * table.element_size()
    return total


@pytest.mark.slow  # CLI subprocesses / a benchmark run / inductor: tens of seconds on 2 shared cores
def test_bench_rows_for_quantized_models():
    options = benchmark.BenchOptions(dtypes=("fp32",), new_tokens=4, repeats=2, batch=2, prompt_length=4,
                                     prefill_length=8, transformers=False, quantizations=("int8", "int4"),
                                     group_size=32, config_overrides=dict(n_layer=1, vocab_size=300, n_positions=64))
    result = benchmark.run(options)
    rows = {(r["impl"], r["batch"]): r for r in result["rows"]}
    default = f"gpt_fast[{benchmark.gpt_fast_backends('cpu')[-1]}]"
    torch.manual_seed(0)
    base = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**options.config_overrides))
    for scheme in ("none", "int8", "int4"):
        name = default if scheme == "none" else f"{default} {scheme}"
        model = base if scheme == "none" else gpt_fast.OpenAIGPTLMHeadModel(base.config).quantize(scheme, 32)
        weights = expected_weight_bytes(model)
        context = options.prompt_length + options.new_tokens / 2
        kv = 2 * 1 * context * 768 * 4
        for batch in (1, 2):
            row = rows[(name, batch)]
            assert row["quantization"] == scheme
            assert row["weights_mb_per_token"] == pytest.approx(weights / 1e6)
            read = row["decode_tok_s"] / batch * (weights + kv * batch)
            assert row["roofline_fraction"] == pytest.approx(read / (result["read_bandwidth_gb_s"] * 1e9))
            # per-repeat ratios against the unquantized model's time in the same repeat, their median
            rounds, base_rounds = row["per_token_s_rounds"], rows[(default, batch)]["per_token_s_rounds"]
            assert len(rounds) == options.repeats and row["decode_tok_s"] == pytest.approx(batch / min(rounds))
            if scheme == "none":
                assert row["speedup_vs_unquantized"] is None
            else:
                ratios = sorted(b / q for b, q in zip(base_rounds, rounds))
                assert row["speedup_vs_unquantized"] == pytest.approx((ratios[0] + ratios[1]) / 2)
    assert rows[(f"{default} int4", 1)]["weights_mb_per_token"] < rows[(f"{default} int8", 1)][
        "weights_mb_per_token"] < rows[(default, 1)]["weights_mb_per_token"] / 3.5
    table = benchmark.format_table(result)
    assert f"{default} int4" in table and "weights MB/tok" in table and "x unquantized" in table


def test_serving_engine_on_a_quantized_model():
    model, tokenizer = tiny_model_and_tokenizer()
    model.quantize("int4", 32)
    assert any(isinstance(m, QuantizedLinear) for m in model.modules())
    prompts = [tokenizer(text)["input_ids"] for text in ("hello, my dog is cute", "the weather today is")]
    engine = Engine(model, tokenizer, max_batch=2, prefill_chunk=4).start()
    try:
        for prompt in prompts:
            out = collect(engine, prompt, SamplingParams(max_tokens=8, temperature=0))[0]
            with torch.inference_mode():
                expected = model.generate(torch.tensor([prompt]), max_new_tokens=8)[0, len(prompt):].tolist()
            assert out["tokens"] == expected
        sampled = collect(engine, prompts[0], SamplingParams(max_tokens=6, temperature=1.0, seed=5), n=2)
        assert all(len(choice["tokens"]) == 6 for choice in sampled.values())
    finally:
        engine.stop()


def test_serve_command_loads_the_model_quantized(tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from gpt_fast.serving import http, launch

    served = {}

    def build_app(model, *args, **kwargs):
        served["model"] = model
        return None, None

    monkeypatch.setattr(http, "build_app", build_app)
    monkeypatch.setattr(launch, "serve_forever", lambda *args, **kwargs: None)
    checkpoint = save_checkpoint(tmp_path / "ckpt")
    assert main(["serve", "--model", str(checkpoint), "--quantization", "int4", "--group-size", "32"]) == 0
    assert served["model"].quantization.bits == 4 and served["model"].quantization.group_size == 32
    assert main(["serve", "--model", str(checkpoint)]) == 0
    assert served["model"].quantization is None
