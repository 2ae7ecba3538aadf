"""Attention forward + backward for training on the CPU, GPT-1's shape (H = 12, D = 64): gpt_fast's fused path
(flash_attention_train + flash_attention_backward, dropout inside the kernels) against PyTorch's SDPA forward +
backward and the eager reference's autograd, measured alternately (benchmarks/timing.py), CPU time per thread.

    python benchmarks/bench_attention_backward.py                       # B = 4, T = 256, fp32 and bf16, p = 0, 0.1
    python benchmarks/bench_attention_backward.py --threads 1 2 --T 256 512

Each candidate takes the packed qkv (B, T, 3C) with requires_grad and a gradient of the output (B, T, C), as the
model's attention does; "sdpa" splits the heads into views, runs F.scaled_dot_product_attention(is_causal=True,
dropout_p=p) and merges them; "reference" is gpt_fast.ops.reference.flash_attention_train's autograd (the mask of
the kernels, in eager PyTorch). Ratio = SDPA's time / the fused path's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from timing import format_table, machine_description, time_alternating

from gpt_fast import ops
from gpt_fast.ops import cpu_isa, reference

H, D = 12, 64
C = H * D
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sdpa(qkv, p):
    B, T, _ = qkv.shape
    q, k, v = (x.view(B, T, H, D).transpose(1, 2) for x in qkv.split(C, dim=-1))  # (B, H, T, D)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p).transpose(1, 2).reshape(B, T, C)


def fused(qkv, p):
    return ops.flash_attention_train(qkv, None, H, p, 1234)[0]


def eager(qkv, p):
    return reference.flash_attention_train(qkv, None, H, p, 1234)[0]


def step(fn, qkv, grad, p):
    def run():
        x = qkv.detach().requires_grad_()
        fn(x, p).backward(grad)
        return x.grad
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--T", type=int, nargs="+", default=[256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    parser.add_argument("--p", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) eager reference")
    args = parser.parse_args()
    print(f"{machine_description().split(',')[0]}; torch {torch.__version__}; tier {cpu_isa.level()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        clock = time.process_time  # CPU time of the process: all its threads together, robust to a shared machine
        for T in args.T:
            for dname in args.dtypes:
                for p in args.p:
                    g = torch.Generator().manual_seed(0)
                    qkv = torch.randn(args.B, T, 3 * C, generator=g).to(DTYPES[dname])
                    grad = torch.randn(args.B, T, C, generator=g).to(DTYPES[dname])
                    candidates = {"fused": step(fused, qkv, grad, p), "sdpa": step(sdpa, qkv, grad, p)}
                    if not args.no_reference:
                        candidates["reference"] = step(eager, qkv, grad, p)
                    samples = time_alternating(candidates, repeats=args.repeats, min_time=0.3, clock=clock)
                    med = {k: statistics.median(v) * 1e3 / threads for k, v in samples.items()}  # ms of wall per thread
                    rows.append([threads, T, dname, p, med["fused"], med["sdpa"], med.get("reference", float("nan")),
                                 med["sdpa"] / med["fused"]])
    print(format_table(["threads", "T", "dtype", "p", "fused ms", "sdpa ms", "reference ms", "sdpa / fused"], rows))
    print("(median CPU time per call divided by the thread count; B = %d, H = %d, D = %d)" % (args.B, H, D))


if __name__ == "__main__":
    main()
