"""FLOPs and bytes of one GPT-1 training step, and what they mean on an H100 (on paper: no GPU here).

    python benchmarks/training_flops.py            # prints the table
    python benchmarks/training_flops.py --write    # also writes benchmarks/results/training_h100.md

FLOPs are the matrix products (2 per multiply-add), which are all but ~1% of the work: per token and layer the four
linear layers (24 C^2), the attention products QK^T and PV (4 T C when every (query, key) pair is computed, as
PyTorch's FlopCounterMode counts SDPA and the eager path; a causal kernel needs about half), and the LM head
(2 C V). A training step is forward + backward = 3x the forward (the backward computes the gradients of the inputs
and of the weights, one product each); gradient checkpointing runs each Block's forward once more. MFU (model FLOPs
utilisation) counts the model's FLOPs only (the full-attention count, as nanoGPT and llm.c do), never the recompute.
tests/test_training_flops.py checks the count against torch.utils.flop_counter on a small model.

Bytes are the HBM traffic of a step outside the GEMMs' own activation reads and writes: the optimizer (fp32 weights,
gradients and two AdamW moments: 16 bytes read and 12 written per parameter), the bf16 weight copies read once
forward and twice backward, and what the memory-bound fused kernels (add_layernorm, bias_gelu, attention) read and
write forward and backward in bf16.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

GPT1 = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=40478, n_positions=512)
H100_BF16_TFLOPS, H100_TBPS = 989.0, 3.35  # H100 SXM, dense bf16 tensor cores; HBM3
# Values the memory-bound kernels of a Block move per token per channel in a training step: forward add_layernorm x2
# (read 2, write 1 each), bias_gelu (read 4, write 4), flash attention (read 3, write 1): 18; backward add_layernorm x2
# (~6 each), bias_gelu (read 8, write 4), flash attention (read 5, write 3): 32.
ELEMENTWISE_PER_TOKEN_PER_LAYER = 50
FORWARD_SHARE = 18 / 50


@dataclass(frozen=True)
class StepCost:
    model_flops: float  # forward + backward matmul FLOPs, attention counted in full
    causal_flops: float  # the same with the causal half of the attention products only
    recompute_flops: float  # extra forward FLOPs of gradient checkpointing (0 without)
    bytes: float  # minimum HBM traffic of the step
    parameters: int


def parameters(n_layer, n_embd, vocab_size, n_positions, **_) -> int:
    """GPT-1's parameter count: token + position embeddings (the LM head is tied) and per Block 12 C^2 + 13 C."""
    return vocab_size * n_embd + n_positions * n_embd + n_layer * (12 * n_embd**2 + 13 * n_embd)


def forward_flops(batch: int, seq: int, n_layer, n_embd, vocab_size, causal: bool = False, **_) -> float:
    """Matmul FLOPs of one forward over batch x seq tokens, logits for every position."""
    tokens = batch * seq
    linear = 24 * n_embd**2  # c_attn 3C^2 + attn.c_proj C^2 + c_fc 4C^2 + mlp.c_proj 4C^2, 2 FLOPs per MAC
    attention = 4 * seq * n_embd * (0.5 * (seq + 1) / seq if causal else 1.0)  # QK^T and PV per query
    return tokens * (n_layer * (linear + attention) + 2 * n_embd * vocab_size)


def elementwise_bytes(batch: int, seq: int, config: dict = GPT1) -> float:
    """bf16 bytes the memory-bound kernels (between the GEMMs) move in one training step."""
    return ELEMENTWISE_PER_TOKEN_PER_LAYER * config["n_embd"] * 2 * config["n_layer"] * batch * seq


def step_cost(batch: int, seq: int, config: dict = GPT1, checkpointing: bool = False) -> StepCost:
    model = 3 * forward_flops(batch, seq, **config)
    causal = 3 * forward_flops(batch, seq, causal=True, **config)
    head = 2 * batch * seq * config["n_embd"] * config["vocab_size"]
    recompute = (forward_flops(batch, seq, causal=True, **config) - head) if checkpointing else 0.0
    n = parameters(**config)
    optimizer = n * (16 + 12)  # read weight, grad, m, v (fp32); write weight, m, v
    weights = n * 2 * 3  # bf16 copy read in the forward and twice in the backward
    traffic = elementwise_bytes(batch, seq, config)
    if checkpointing:  # the recomputed forward runs its memory-bound kernels again
        traffic *= 1 + FORWARD_SHARE
    return StepCost(model, causal, recompute, optimizer + weights + traffic, n)


def h100_table(shapes=((16, 512), (64, 512))) -> str:
    lines = ["# A GPT-1 training step on an H100, on paper", "",
             "Written by `python benchmarks/training_flops.py --write` (see its docstring for what is counted). "
             f"H100 SXM: {H100_BF16_TFLOPS:.0f} TFLOP/s dense bf16, {H100_TBPS} TB/s. GPT-1: "
             f"{parameters(**GPT1) / 1e6:.1f} M parameters. Floor = max(causal FLOPs / peak, bytes / bandwidth); "
             "the MFU columns give the step time and tokens/s at 40% (what llm.c reaches for GPT-2 124M on an "
             "H100) and 50% model FLOPs utilisation.", "",
             "| batch x seq | checkpointing | model GFLOP | causal GFLOP | recompute GFLOP | GB moved | FLOP/byte | "
             "floor (ms) | at 40% MFU | at 50% MFU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for batch, seq in shapes:
        for ckpt in (False, True):
            c = step_cost(batch, seq, checkpointing=ckpt)
            floor = max((c.causal_flops + c.recompute_flops) / (H100_BF16_TFLOPS * 1e12), c.bytes / (H100_TBPS * 1e12))
            cells = []
            for mfu in (0.4, 0.5):
                t = c.model_flops / (mfu * H100_BF16_TFLOPS * 1e12)
                cells.append(f"{t * 1e3:.1f} ms, {batch * seq / t / 1e3:.0f}k tok/s")
            lines.append(f"| {batch} x {seq} | {'yes' if ckpt else 'no'} | {c.model_flops / 1e9:.0f} | "
                         f"{c.causal_flops / 1e9:.0f} | {c.recompute_flops / 1e9:.0f} | {c.bytes / 1e9:.2f} | "
                         f"{c.model_flops / c.bytes:.0f} | {floor * 1e3:.2f} | {cells[0]} | {cells[1]} |")
    batch, seq = shapes[0]
    c = step_cost(batch, seq)
    gemm_ms = c.model_flops / (0.4 * H100_BF16_TFLOPS * 1e12) * 1e3
    between_ms = elementwise_bytes(batch, seq) / (H100_TBPS * 1e12) * 1e3
    intensity = min(step_cost(b, t, checkpointing=k).model_flops / step_cost(b, t, checkpointing=k).bytes
                    for b, t in shapes for k in (False, True))
    lines += ["", f"What the kernels aim for: the step is compute-bound at every shape above ({intensity:.0f} FLOPs "
              "per byte or more), so MFU is set by the GEMMs (cuBLAS reaches ~70-80% of peak at these sizes) "
              "and by the time the memory-bound kernels between them take: add_layernorm, bias_gelu and the "
              f"attention kernels forward and backward move ~{ELEMENTWISE_PER_TOKEN_PER_LAYER} values per token per "
              f"channel per Block, {elementwise_bytes(batch, seq) / 1e9:.1f} GB per step at {batch} x {seq} in bf16: "
              f"{between_ms:.1f} ms at full bandwidth against {gemm_ms:.1f} ms for the whole step at 40% MFU. So 40% "
              "(llm.c's figure for the same size) is the aim; fused kernels running near bandwidth are what keep "
              "those kernels to a small share of it."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/training_h100.md")
    args = parser.parse_args()
    text = h100_table()
    print(text)
    if args.write:
        (Path(__file__).parent / "results" / "training_h100.md").write_text(text)


if __name__ == "__main__":
    main()
