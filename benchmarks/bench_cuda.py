"""Benchmarks of the gpt_fast CUDA kernels at GPT-1 shapes against PyTorch's paths, measured in the same run.

    python benchmarks/bench_cuda.py [--write]        # table: time, TFLOP/s, GB/s, baseline time, speed-up
    python benchmarks/bench_cuda.py --roofline       # writes benchmarks/results/cuda_roofline.md (no GPU needed)
    pytest benchmarks/bench_cuda.py --benchmark-enable   # the same cases as pytest-benchmark tests

Baselines: eager gpt_fast.ops.reference (cuBLAS matmuls + elementwise kernels) for every op, and
F.scaled_dot_product_attention (flash / memory-efficient backends) for the attention ops; the training attention
(forward with dropout 0.1, and forward + backward through autograd) against SDPA with the same dropout.
FLOPs and bytes are the minimum the op needs (each input read once, each output written once), so GB/s and
TFLOP/s are lower bounds of what the kernel really moves and computes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# GPT-1: 768 wide, 12 heads of 64, MLP 3072, 512 positions.
C, H, D, MLP, TMAX = 768, 12, 64, 3072, 512
PREFILL_B, PREFILL_T = 8, 512  # a batch of full-length prompts
DECODE_B, DECODE_LEN = 8, 511  # one new token per row with 511 cached

# H100 SXM peaks (public specifications, dense): bf16/fp16 tensor cores, fp32 CUDA cores, HBM3 bandwidth.
H100_TFLOPS = {"bf16": 989.0, "fp32": 67.0}
H100_TBPS = 3.35


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float


def costs(es: int = 2) -> dict[str, Cost]:
    """FLOPs and bytes per call at the GPT-1 shapes above, element size es (2 for bf16, 4 for fp32)."""
    rows = PREFILL_B * PREFILL_T
    keys = PREFILL_T * (PREFILL_T + 1) / 2  # causal (query, key) pairs per head
    L = DECODE_LEN + 1
    return {
        # x + residual + bias, mean, variance, normalise, scale, shift: ~8 flops per element
        "add_layernorm": Cost(8 * rows * C, es * (3 * rows * C + 3 * C)),
        # add, cube, 2 fma, tanh (~10), 2 mul: ~16 flops per element
        "bias_gelu": Cost(16 * rows * MLP, es * (2 * rows * MLP + MLP)),
        # S = Q K^T and O = P V over the causal half: 2 x 2 flops per (query, key, d)
        "flash_attention": Cost(4 * PREFILL_B * H * keys * D, es * (rows * 3 * C + rows * C)),
        # flash_attention with dropout, also writing lse (B, H, T) fp32
        "flash_attention_train": Cost(4 * PREFILL_B * H * keys * D,
                                      es * (rows * 3 * C + rows * C) + 4 * PREFILL_B * H * PREFILL_T),
        # forward + backward (model FLOPs: 2 products forward, 4 backward); backward reads grad_out, qkv, out, lse
        # and writes grad_qkv
        "attention_train_step": Cost(12 * PREFILL_B * H * keys * D,
                                     es * rows * (3 * C + C + C + 3 * C + C + 3 * C) + 8 * PREFILL_B * H * PREFILL_T),
        # one query per row over L keys; reads the whole cache prefix, writes one key/value row
        "decode_attention": Cost(4 * DECODE_B * H * L * D,
                                 es * (2 * DECODE_B * H * L * D + DECODE_B * (3 * C + C + 2 * C))),
    }


def roofline_markdown() -> str:
    lines = ["# CUDA kernels: work and H100 roofline at GPT-1 shapes", "",
             f"Written by `python benchmarks/bench_cuda.py --roofline`. Shapes: prefill B={PREFILL_B}, "
             f"T={PREFILL_T} (C={C}, {H} heads of {D}, MLP {MLP}); decode B={DECODE_B}, one new token over "
             f"{DECODE_LEN} cached. Minimum traffic (each input read once, each output written once). H100 SXM: "
             f"{H100_TFLOPS['bf16']:.0f} TFLOP/s bf16 tensor, {H100_TFLOPS['fp32']:.0f} TFLOP/s fp32, "
             f"{H100_TBPS} TB/s HBM3. Roofline time = max(FLOPs / peak, bytes / bandwidth).", "",
             "| kernel | dtype | GFLOP | MB moved | FLOP/byte | H100 roofline (µs) | bound |",
             "|---|---|---|---|---|---|---|"]
    for dtype, es in (("bf16", 2), ("fp32", 4)):
        for name, c in costs(es).items():
            # only the attention products run on tensor cores; elementwise work runs on fp32 cores either way
            tensor = name in ("flash_attention", "flash_attention_train", "attention_train_step")
            peak = H100_TFLOPS[dtype if tensor else "fp32"] * 1e12
            t_compute, t_memory = c.flops / peak, c.bytes / (H100_TBPS * 1e12)
            lines.append(f"| {name} | {dtype} | {c.flops / 1e9:.3f} | {c.bytes / 1e6:.2f} | {c.flops / c.bytes:.1f} | "
                         f"{max(t_compute, t_memory) * 1e6:.1f} | {'compute' if t_compute > t_memory else 'memory'} |")
    return "\n".join(lines) + "\n"


def cases(dtype: torch.dtype, device: str = "cuda"):
    """{op: (kernel call, [(baseline name, baseline call)])} at the GPT-1 shapes."""
    from gpt_fast.ops import reference

    g = torch.Generator(device=device).manual_seed(0)
    def rnd(*s):
        return torch.randn(*s, generator=g, device=device, dtype=dtype)
    ops = torch.ops.gpt_fast
    x, res, vec = rnd(PREFILL_B, PREFILL_T, C), rnd(PREFILL_B, PREFILL_T, C), rnd(C)
    h, hb = rnd(PREFILL_B, PREFILL_T, MLP), rnd(MLP)
    qkv = rnd(PREFILL_B, PREFILL_T, 3 * C)
    dq = rnd(DECODE_B, 1, 3 * C)
    kc, vc = rnd(DECODE_B, H, TMAX, D), rnd(DECODE_B, H, TMAX, D)
    lens = torch.full((DECODE_B,), DECODE_LEN, device=device, dtype=torch.int64)

    def sdpa_prefill():
        q, k, v = (reference.split_heads(p, H) for p in qkv.split(C, dim=-1))
        return reference.merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def sdpa_decode():
        q, k, v = (reference.split_heads(p, H) for p in dq.split(C, dim=-1))  # (B, H, 1, D)
        kc[:, :, DECODE_LEN] = k[:, :, 0]
        vc[:, :, DECODE_LEN] = v[:, :, 0]
        return reference.merge_heads(F.scaled_dot_product_attention(q, kc[:, :, : DECODE_LEN + 1],
                                                                    vc[:, :, : DECODE_LEN + 1]))

    qkv_g, grad_out = qkv.detach().clone().requires_grad_(True), rnd(PREFILL_B, PREFILL_T, C)
    p = 0.1

    def sdpa_prefill_dropout():
        q, k, v = (reference.split_heads(t, H) for t in qkv.split(C, dim=-1))
        return reference.merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p))

    def fused_step():
        qkv_g.grad = None
        ops.flash_attention_train(qkv_g, None, H, p, 1)[0].backward(grad_out)  # autograd: the backward kernel

    def sdpa_step():
        qkv_g.grad = None
        q, k, v = (reference.split_heads(t, H) for t in qkv_g.split(C, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        reference.merge_heads(out).backward(grad_out)

    return {
        "add_layernorm": (lambda: ops.add_layernorm(x, res, vec, vec, vec, 1e-5),
                          [("eager", lambda: reference.add_layernorm(x, res, vec, vec, vec, 1e-5))]),
        "bias_gelu": (lambda: ops.bias_gelu(h, hb), [("eager", lambda: reference.bias_gelu(h, hb))]),
        "flash_attention": (lambda: ops.flash_attention(qkv, None, H),
                            [("sdpa", sdpa_prefill), ("eager", lambda: reference.flash_attention(qkv, None, H))]),
        "flash_attention_train": (lambda: ops.flash_attention_train(qkv, None, H, p, 1),
                                  [("sdpa", sdpa_prefill_dropout),
                                   ("eager", lambda: reference.flash_attention_train(qkv, None, H, p, 1))]),
        "attention_train_step": (fused_step, [("sdpa", sdpa_step)]),
        "decode_attention": (lambda: ops.decode_attention(dq, kc, vc, lens, H),
                             [("sdpa", sdpa_decode),
                              ("eager", lambda: reference.decode_attention(dq, kc, vc, lens, H))]),
    }


def cuda_time(fn, warmup: int = 10, iters: int = 50) -> float:
    """Median seconds per call, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def table(dtypes=(torch.bfloat16, torch.float16, torch.float32)) -> str:
    name = torch.cuda.get_device_name()
    lines = [f"Device: {name}, torch {torch.__version__}", "",
             "| kernel | dtype | µs | TFLOP/s | GB/s | baseline | baseline µs | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for dtype in dtypes:
        es = torch.finfo(dtype).bits // 8
        for op, (kernel, baselines) in cases(dtype).items():
            t, c = cuda_time(kernel), costs(es)[op]
            for base_name, base in baselines:
                tb = cuda_time(base)
                lines.append(f"| {op} | {str(dtype).removeprefix('torch.')} | {t * 1e6:.1f} | "
                             f"{c.flops / t / 1e12:.2f} | "
                             f"{c.bytes / t / 1e9:.0f} | {base_name} | {tb * 1e6:.1f} | {tb / t:.2f}x |")
    return "\n".join(lines)


# --- pytest-benchmark tests (run: pytest benchmarks/bench_cuda.py --benchmark-enable) ---

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("op", list(costs()))
@pytest.mark.parametrize("which", ["kernel", "sdpa", "eager"])
def test_bench(benchmark, op, which):
    import gpt_fast.ops  # noqa: F401

    kernel, baselines = cases(torch.bfloat16)[op]
    fn = kernel if which == "kernel" else dict(baselines).get(which)
    if fn is None:
        pytest.skip(f"no {which} baseline for {op}")

    def call():
        fn()
        torch.cuda.synchronize()

    benchmark(call)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roofline", action="store_true", help="write benchmarks/results/cuda_roofline.md and exit")
    parser.add_argument("--write", action="store_true", help="also write benchmarks/results/cuda_bench.md")
    args = parser.parse_args()
    if args.roofline:
        out = Path(__file__).resolve().parent / "results" / "cuda_roofline.md"
        out.write_text(roofline_markdown())
        print(out.read_text())
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda: needs a CUDA GPU (use --roofline for the model only)")
    import gpt_fast.ops  # noqa: F401  (loads the extension)

    result = table()
    print(result)
    if args.write:
        out = Path(__file__).resolve().parent / "results" / "cuda_bench.md"
        out.write_text("# CUDA kernels vs PyTorch (python benchmarks/bench_cuda.py --write)\n\n" + result + "\n")


if __name__ == "__main__":
    main()
