"""benchmarks/bench_assisted.py end to end on two tiny random checkpoints: a row per drafter, its draft counts and
its comparison with plain decoding's tokens. No figure is judged."""

import copy
import json
import sys
from pathlib import Path

import torch

import gpt_fast

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_assisted  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = ["<unk>", *LETTERS, *(c + "</w>" for c in LETTERS)]


def checkpoint(folder: Path, model) -> Path:
    model.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(VOCAB)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def test_tiny_run_checks_and_has_a_row_per_drafter(tmp_path, capsys):
    torch.manual_seed(0)
    config = gpt_fast.OpenAIGPTConfig(vocab_size=len(VOCAB), n_positions=128, n_embd=32, n_layer=2, n_head=2)
    model = gpt_fast.OpenAIGPTLMHeadModel(config)
    twin = copy.deepcopy(model)  # every draft is kept: the row shows 100%
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be that is the question " * 20)
    bench_assisted.main(["--model", str(checkpoint(tmp_path / "model", model)),
                         "--assistant", str(checkpoint(tmp_path / "assistant", twin)), "--num-prompts", "2",
                         "--passages-from", str(text),
                         "--new-tokens", "9", "--num-assistant-tokens", "2", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    assert [row[:2] for row in rows] == [["plain", "-"], ["assistant", "2"], ["assistant", "4"],
                                         ["assistant, threshold 0.4", "4"], ["prompt lookup", "4"]]
    assert all(row[7] == "2/2" for row in rows)  # a copy's drafts: the tokens are plain decoding's
    assert rows[0][5] == "-" and rows[0][6] == "1.00"  # one pass a token
    assert rows[1][5] == "100%" and rows[1][6] == "0.38"  # 8 tokens after the prefill: passes of 3, 3, 2
    assert rows[2][5] == "100%" and rows[2][6] == "0.25"  # 5 + 3
    assert "model 2 x 32, assistant 2 x 32" in out and "kernel tier" in out
