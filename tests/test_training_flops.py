"""benchmarks/training_flops.py's FLOP count (the H100 estimate of issue 13 rests on it) against PyTorch's own
torch.utils.flop_counter over a real training step of gpt_fast's model: forward, loss and backward."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import training_flops  # noqa: E402


@pytest.mark.parametrize("shape", [dict(n_layer=2, n_embd=48, n_head=4, vocab_size=101, n_positions=32),
                                   dict(n_layer=3, n_embd=40, n_head=5, vocab_size=77, n_positions=16)])
def test_step_flops_match_pytorchs_counter(shape):
    batch, seq = 3, shape["n_positions"]
    model = OpenAIGPTLMHeadModel(OpenAIGPTConfig(**shape, attn_implementation="eager"))  # attention as matmuls
    ids = torch.randint(0, shape["vocab_size"], (batch, seq))
    with FlopCounterMode(display=False) as counter:
        model(ids).logits.float().sum().backward()  # every position's logits, as the count assumes
    assert training_flops.step_cost(batch, seq, shape).model_flops == counter.get_total_flops()
    assert training_flops.parameters(**shape) == sum(p.numel() for p in model.parameters())


def test_gpt1_figures_written_are_current():
    written = Path(training_flops.__file__).parent / "results" / "training_h100.md"
    assert written.read_text() == training_flops.h100_table(), "rerun python benchmarks/training_flops.py --write"
