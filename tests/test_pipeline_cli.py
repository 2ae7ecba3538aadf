"""Streamers, pipeline("text-generation") and the gpt-fast CLI (run as `python -m gpt_fast.cli` subprocesses)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import gpt_fast  # noqa: E402
from gpt_fast import OpenAIGPTLMHeadModel  # noqa: E402
from gpt_fast.cli import main  # noqa: E402
from gpt_fast.generation.pipeline import TextGenerationPipeline  # noqa: E402
from gpt_fast.generation.streaming import TextIteratorStreamer, TextStreamer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

LETTERS = "abcdefghijklmnopqrstuvwxyz"
# a tiny GPT-1-style BPE vocabulary: letters inside and at the end of words, and a few merges
TINY_VOCAB = ["<unk>", *LETTERS, *(c + "</w>" for c in LETTERS), ".</w>", "th", "the</w>", "is</w>", "fu", "fut"]
TINY_MERGES = [("t", "h"), ("th", "e</w>"), ("i", "s</w>"), ("f", "u"), ("fu", "t")]


class WordTokenizer:
    """A stand-in tokenizer: token i is "p<i>" (a word start) when i % 3 == 0, else the whole word "w<i></w>"
    ("</w>" ends a word, as in GPT-1's BPE). Prompts are whole words "w<i>"."""

    def __init__(self, vocab_size):
        self.pieces = [f"w{i}</w>" if i % 3 else f"p{i}" for i in range(vocab_size)]

    def __call__(self, text, return_tensors=None):
        ids = [int(word[1:]) for word in text.split()]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}

    def decode(self, ids, skip_special_tokens=False):
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(self.pieces[i].replace("</w>", " ") for i in ids).rstrip(" ")


@pytest.fixture(scope="module")
def hf():
    torch.manual_seed(0)
    config = transformers.OpenAIGPTConfig(vocab_size=60, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return transformers.OpenAIGPTLMHeadModel(config).eval()


@pytest.fixture(scope="module")
def model(hf):
    return OpenAIGPTLMHeadModel.from_transformers(hf).eval()


@pytest.fixture
def tokenizer():
    return WordTokenizer(60)


# -- streamers ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("skip_prompt", [False, True])
def test_text_streamer_pieces_make_the_decoded_text(model, tokenizer, skip_prompt):
    pieces = []
    streamer = TextStreamer(tokenizer, skip_prompt=skip_prompt, callback=lambda text, end: pieces.append((text, end)))
    ids = tokenizer("w1 w2 w4", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=12, streamer=streamer)
    full = tokenizer.decode(out[0])
    expected = full[len(tokenizer.decode(ids[0])):] if skip_prompt else full
    assert "".join(text for text, _ in pieces) == expected
    assert [end for _, end in pieces].count(True) == 1 and pieces[-1][1]


def test_text_streamer_waits_for_the_end_of_a_word(tokenizer):
    pieces = []
    streamer = TextStreamer(tokenizer, callback=lambda text, end: pieces.append(text))
    streamer.put(torch.tensor([[3]]))  # "p3": a word start, not yet finished
    assert pieces == []
    streamer.put(torch.tensor([4]))  # "w4</w>" ends the word
    streamer.put(torch.tensor([6]))  # "p6" starts the next: "p3w4 " is now final
    assert pieces == ["p3w4 "]
    streamer.end()
    assert pieces == ["p3w4 ", "p6"]


def test_text_streamer_prints_to_a_file(model, tokenizer):
    sink = io.StringIO()
    ids = tokenizer("w1", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=6, streamer=TextStreamer(tokenizer, file=sink))
    assert sink.getvalue() == tokenizer.decode(out[0]) + "\n"


def test_text_iterator_streamer_from_another_thread(model, tokenizer):
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
    ids = tokenizer("w4 w5", return_tensors="pt")["input_ids"]
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=model.generate(ids, max_new_tokens=10,
                                                                              streamer=streamer)))
    worker.start()
    text = "".join(streamer)
    worker.join()
    full = tokenizer.decode(result["out"][0])
    assert text == full[len(tokenizer.decode(ids[0])):]


def test_streamers_reject_batches_and_bad_tokenizers(tokenizer):
    with pytest.raises(ValueError, match="one sequence"):
        TextStreamer(tokenizer).put(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="decode"):
        TextStreamer(object())


# -- pipeline ----------------------------------------------------------------------------------------------------
def test_pipeline_text_matches_transformers_generate(hf, model, tokenizer):
    generator = gpt_fast.pipeline("text-generation", model=model, tokenizer=tokenizer)
    result = generator("w1 w2", max_new_tokens=7, do_sample=False)  # the pipeline samples by default
    ids = tokenizer("w1 w2", return_tensors="pt")["input_ids"]
    tokens = hf.generate(ids, max_new_tokens=7, do_sample=False)[0]
    new_text = tokenizer.decode(tokens[ids.shape[1]:])  # transformers 5.x: the new tokens decoded alone,
    assert result == [{"generated_text": "w1 w2" + new_text}]  # joined to the prompt as they are
    assert generator("w1 w2", max_new_tokens=7, do_sample=False,
                     return_full_text=False) == [{"generated_text": new_text}]


def test_pipeline_lists_and_num_return_sequences(model, tokenizer):
    generator = gpt_fast.pipeline("text-generation", model=model, tokenizer=tokenizer)
    results = generator(["w1", "w2 w4"], max_new_tokens=4, do_sample=True, num_return_sequences=2, seed=0)
    assert len(results) == 2 and all(len(r) == 2 for r in results)
    assert results[1][0]["generated_text"].startswith("w2 w4")
    with pytest.raises(TypeError, match="text_inputs"):
        generator(5)


def test_pipeline_defaults_are_transformers_5(hf, tokenizer):
    # transformers 5.x: task_specific_params are not read; what neither the call, pipeline() nor the model's
    # generation_config set comes from the pipeline's defaults (max_new_tokens=256, do_sample=True, temperature=0.7)
    ours = OpenAIGPTLMHeadModel.from_transformers(hf)
    ours.config.task_specific_params = {"text-generation": {"max_length": 9, "do_sample": False}}
    ours.generation_config = gpt_fast.GenerationConfig(max_new_tokens=4)
    generator = gpt_fast.pipeline("text-generation", model=ours, tokenizer=tokenizer)
    ids = tokenizer("w1 w2", return_tensors="pt")["input_ids"]
    sampled = ours.generate(ids, max_new_tokens=4, do_sample=True, temperature=0.7, seed=3)
    assert generator("w1 w2", seed=3)[0]["generated_text"] == "w1 w2" + tokenizer.decode(sampled[0, 2:])
    greedy = hf.generate(ids, max_length=6, do_sample=False)
    expected = "w1 w2" + tokenizer.decode(greedy[0, 2:])
    assert generator("w1 w2", max_length=6, do_sample=False)[0]["generated_text"] == expected
    at_init = gpt_fast.pipeline("text-generation", model=ours, tokenizer=tokenizer, max_length=6, do_sample=False)
    assert at_init("w1 w2")[0]["generated_text"] == expected
    assert generator.generate_kwargs({"do_sample": False}) == {"do_sample": False}  # no sampling defaults
    ours.generation_config = gpt_fast.GenerationConfig()
    assert generator.generate_kwargs({}) == {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}


def test_pipeline_from_a_folder_with_dtype_and_device(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    for device in (-1, "cpu", torch.device("cpu")):
        generator = gpt_fast.pipeline("text-generation", model=str(tmp_path), tokenizer=tokenizer,
                                      dtype="bfloat16", device=device)
        assert isinstance(generator, TextGenerationPipeline)
        assert generator.model.dtype == torch.bfloat16 and generator.device == torch.device("cpu")
    assert generator("w1", max_new_tokens=3)[0]["generated_text"].startswith("w1")


def test_pipeline_takes_transformers_loading_arguments(model, tokenizer, tmp_path):
    """pipeline("text-generation", model=folder, device_map=..., model_kwargs=..., ...) as transformers' docs write
    it: none of them may reach generate() (they did: TypeError at the first call)."""
    model.save_pretrained(tmp_path)
    generator = gpt_fast.pipeline("text-generation", model=str(tmp_path), tokenizer=tokenizer, device_map="auto",
                                  torch_dtype="bfloat16", model_kwargs={"resid_pdrop": 0.0}, trust_remote_code=True,
                                  revision="main", token=None, use_fast=True, framework="pt", max_new_tokens=2)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert generator.model.device.type == expected and generator.model.dtype == torch.bfloat16
    assert generator.model.config.resid_pdrop == 0.0 and not hasattr(generator.model.config, "revision")
    assert generator("w1", do_sample=False)[0]["generated_text"].startswith("w1")
    on_cpu = gpt_fast.pipeline("text-generation", model=model, tokenizer=tokenizer, device_map={"": "cpu"})
    assert on_cpu.device == torch.device("cpu")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(task="summarization", model="x"), ValueError, "text-generation"),
    (dict(task="text-generation", model="x", framework="tf"), ValueError, "framework must be 'pt'"),
    (dict(task="text-generation", model="x", device_map={"a": 0, "b": 1}), NotImplementedError, "one device"),
    (dict(task="text-generation"), ValueError, "model="),
    (dict(task="text-generation", model=3), TypeError, "model"),
    (dict(task="text-generation", dtype="int3", model="x"), ValueError, "dtype"),
])
def test_pipeline_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        gpt_fast.pipeline(**kwargs)


def test_pipeline_needs_a_tokenizer_for_a_model_object(model):
    with pytest.raises(ValueError, match="tokenizer"):
        gpt_fast.pipeline("text-generation", model=model)


# -- the CLI -----------------------------------------------------------------------------------------------------
def run_cli(*args, stdin=None, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "gpt_fast.cli", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def run_clis(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """run_cli for independent command lines, two at a time (each is mostly a new interpreter importing torch)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda args: run_cli(*args), commands))


def run_cli_here(*args):
    """run_cli's result from gpt_fast.cli.main in this process: the same exit code, stdout and stderr without the
    ~2 s of a new interpreter importing torch. For --help and for command lines refused before any work (usage
    errors, missing folders); test_the_module_entry_point runs the real `python -m gpt_fast.cli`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's --help
            code = exit_.code or 0
    return subprocess.CompletedProcess(["gpt-fast", *args], code, out.getvalue(), err.getvalue())


def assert_one_line_error(result, code, match):
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("gpt-fast: error:") and match in lines[-1], result.stderr
    assert sum(line.startswith("gpt-fast: error:") for line in lines) == 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random checkpoint with a tiny BPE tokenizer (vocab.json + merges.txt) in one folder."""
    folder = tmp_path_factory.mktemp("tiny-gpt")
    torch.manual_seed(1)
    config = gpt_fast.OpenAIGPTConfig(vocab_size=len(TINY_VOCAB), n_positions=24, n_embd=32, n_layer=2, n_head=2)
    OpenAIGPTLMHeadModel(config).save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(TINY_VOCAB)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in TINY_MERGES) + "\n")
    return folder


def test_the_module_entry_point():
    result = run_cli("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: gpt-fast")
    assert_one_line_error(run_cli("frobnicate"), 2, "invalid choice")


@pytest.mark.parametrize("command", [[], ["generate"], ["bench"], ["convert"], ["train"], ["serve"]])
def test_help(command):
    result = run_cli_here(*command, "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: gpt-fast")


@pytest.mark.parametrize("args,code,match", [
    (["generate", "hi", "--model", "/no/such/folder"], 1, "no such model folder"),
    (["generate", "hi", "--model", ".", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["frobnicate"], 2, "invalid choice"),
    (["bench", "--dtypes", "fp8"], 2, "--dtypes"),
    (["bench", "--repeats", "0"], 2, "positive"),
    (["convert", "/no/such/folder", "/tmp/out"], 1, "no such model folder"),
])
def test_cli_errors_are_one_line(args, code, match):
    assert_one_line_error(run_cli_here(*args), code, match)


def test_generate_from_stdin_streams_the_same_text_as_no_stream(checkpoint):
    with ThreadPoolExecutor(max_workers=2) as pool:
        streamed = pool.submit(run_cli, "generate", "--model", str(checkpoint), "--max-new-tokens", "8",
                               stdin="the future is\n")
        plain = run_cli("generate", "the future is", "--model", str(checkpoint), "--max-new-tokens", "8", "--no-stream")
        streamed = streamed.result()
    assert streamed.returncode == 0 and plain.returncode == 0, streamed.stderr + plain.stderr
    assert streamed.stdout.startswith("the future is") and streamed.stdout == plain.stdout
    assert "tokens/s" in streamed.stderr and "loading" in streamed.stderr


def test_generate_sampling_flags_and_seed(checkpoint):
    args = ["generate", "the", "--model", str(checkpoint), "--max-new-tokens", "6", "--do-sample", "--top-k", "5",
            "--temperature", "0.8", "--seed", "3", "--num-return-sequences", "2"]
    first, again = run_clis(args, args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout and first.stdout.count("=== sequence") == 2


def test_generate_prompt_too_long_is_one_line(checkpoint):
    result = run_cli("generate", "the " * 30, "--model", str(checkpoint), "--max-new-tokens", "4")
    assert_one_line_error(result, 1, "n_positions")


def test_convert_bin_to_bf16_safetensors(tmp_path):
    torch.manual_seed(2)
    config = gpt_fast.OpenAIGPTConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    model = OpenAIGPTLMHeadModel(config)
    source, destination = tmp_path / "bin", tmp_path / "st"
    source.mkdir()
    config.save_pretrained(source)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    torch.save(state, source / "pytorch_model.bin")
    (source / "vocab.json").write_text("{}")
    result = run_cli("convert", str(source), str(destination), "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    assert (destination / "model.safetensors").is_file() and (destination / "vocab.json").is_file()
    loaded = OpenAIGPTLMHeadModel.from_pretrained(destination)
    assert loaded.dtype == torch.bfloat16
    for key, value in state.items():
        torch.testing.assert_close(loaded.state_dict()[key], value.to(torch.bfloat16), rtol=0, atol=0)
    assert_one_line_error(run_cli("convert", str(source), str(destination)), 1, "--overwrite")


def test_bench_table_names_the_cpu_and_tier():
    """The table's layout (the benchmark itself runs in benchmarks/, not in the unit tests)."""
    from gpt_fast.cli.benchmark import BenchOptions, Row, format_table

    row = Row("fp32", "gpt_fast[sdpa]", 1, ttft_ms=1.0, decode_tok_s=50.0, prefill_ms=9.0,
              speedup_vs_transformers=5.0, roofline_fraction=0.9)
    result = {"date": "today", "options": BenchOptions().__dict__, "read_bandwidth_gb_s": 30.0,
              "machine": {"cpu": "Some CPU", "cpu_isa": "avx2", "threads": 2, "device": "cpu"},
              "rows": [row.__dict__]}
    table = format_table(result)
    assert "Some CPU" in table and "kernel tier avx2" in table and "decode tok/s" in table
    assert "gpt_fast[sdpa]" in table and "50.0" in table and "90" in table


def test_bench_png_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "matplotlib.py").write_text("raise ImportError('no matplotlib here')\n")  # shadows the installed one
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert_one_line_error(run_cli("bench", "--png", str(tmp_path / "x.png")), 1, "matplotlib")


def test_integrate_steps_counts_every_step_once():
    from gpt_fast.cli.benchmark import integrate_steps

    assert integrate_steps([(10, 1.0), (12, 3.0)]) == pytest.approx(1.0 + 2.0 + 3.0)  # steps at 10, 11, 12
    assert integrate_steps([(5, 2.0), (6, 2.0), (9, 5.0)]) == pytest.approx(2 + 2 + 3 + 4 + 5)
    assert integrate_steps([(7, 0.5)]) == 0.5
