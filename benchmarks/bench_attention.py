"""CPU attention kernels against torch SDPA at GPT-1 shapes (H=12, D=64).

    python benchmarks/bench_attention.py            # table: time, throughput, ratio vs SDPA, measured alternately
    pytest benchmarks/bench_attention.py            # the same cases as pytest-benchmark tests

Baselines are SDPA as the model would call it: prefill splits the packed qkv into (B, H, T, D) views, runs
F.scaled_dot_product_attention(is_causal=True) and merges the heads back to (B, T, C); decode splits the new
token's q/k/v, writes k/v into the (B, H, Tmax, D) caches, runs SDPA over the cached prefix and merges heads.
"SDPA only" is the bare SDPA call on ready-made views, for reference. Ratio = SDPA path time / kernel time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from timing import time_alternating

from gpt_fast import ops

H, D = 12, 64
C = H * D
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sdpa_prefill(qkv):
    B, T, _ = qkv.shape
    q, k, v = (p.view(B, T, H, D).transpose(1, 2) for p in qkv.split(C, dim=-1))  # (B, H, T, D)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)


def sdpa_decode(qkv, k_cache, v_cache, length: int):
    B = qkv.shape[0]
    q, k, v = (p.view(B, 1, H, D).transpose(1, 2) for p in qkv.split(C, dim=-1))  # (B, H, 1, D)
    k_cache[:, :, length:length + 1] = k
    v_cache[:, :, length:length + 1] = v
    out = F.scaled_dot_product_attention(q, k_cache[:, :, :length + 1], v_cache[:, :, :length + 1])
    return out.transpose(1, 2).reshape(B, 1, C)


def prefill_case(B, T, dtype):
    qkv = torch.randn(B, T, 3 * C).to(dtype)
    q, k, v = (p.view(B, T, H, D).transpose(1, 2) for p in qkv.split(C, dim=-1))
    work = 4 * B * H * D * T * (T + 1) / 2  # causal QK^T and PV flops
    return dict(
        ours=lambda: ops.flash_attention(qkv, None, H),
        sdpa=lambda: sdpa_prefill(qkv),
        sdpa_only=lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        work=work, unit="GFLOP/s",
    )


def decode_case(B, L, dtype):
    Tmax = 1024
    qkv = torch.randn(B, 1, 3 * C).to(dtype)
    kc, vc = torch.randn(B, H, Tmax, D).to(dtype), torch.randn(B, H, Tmax, D).to(dtype)
    lengths = torch.full((B,), L)
    q = qkv[..., :C].view(B, 1, H, D).transpose(1, 2)
    cache_bytes = 2 * B * H * (L + 1) * D * kc.element_size()  # keys and values read once
    return dict(
        ours=lambda: ops.decode_attention(qkv, kc, vc, lengths, H),
        sdpa=lambda: sdpa_decode(qkv, kc, vc, L),
        sdpa_only=lambda: F.scaled_dot_product_attention(q, kc[:, :, :L + 1], vc[:, :, :L + 1]),
        work=cache_bytes, unit="GB/s",
    )


CASES = {f"prefill B=1 T=512 {n}": (prefill_case, (1, 512, dt)) for n, dt in DTYPES.items()}
CASES.update({f"decode B={B} L={L} {n}": (decode_case, (B, L, dt))
              for n, dt in DTYPES.items() for B in (1, 8) for L in (128, 512)})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall",
                        help="thread: CPU time of the calling thread (with --threads 1, immune to time-slicing "
                             "on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread" and torch.get_num_threads() != 1:
        parser.error("--clock thread measures one thread only; use it with --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, "
          f"best (median) of {args.rounds} rounds")
    head = (f"{'case':<26}{'kernel':>18}{'SDPA path':>18}{'SDPA only':>18}{'kernel thru':>16}{'ratio':>7}"
            f"{'ratio med':>10}")
    print(head)
    print("-" * len(head))
    for name, (make, case_args) in CASES.items():
        case = make(*case_args)
        t = time_alternating({k: case[k] for k in ("ours", "sdpa", "sdpa_only")}, args.rounds, warmup=2,
                             min_time=0.02, clock=clock)
        best = {k: min(v) for k, v in t.items()}
        med = {k: statistics.median(v) for k, v in t.items()}
        def fmt(k):
            return f"{best[k] * 1e6:8.1f} ({med[k] * 1e6:6.1f})us"  # noqa: B023 (called inside the loop)
        thru = case["work"] / best["ours"] / 1e9
        print(f"{name:<26}{fmt('ours'):>18}{fmt('sdpa'):>18}{fmt('sdpa_only'):>18}{thru:>9.1f} {case['unit']:<7}"
              f"{best['sdpa'] / best['ours']:>6.2f}x{med['sdpa'] / med['ours']:>9.2f}x")


try:
    import pytest

    @pytest.mark.parametrize("impl", ["ours", "sdpa"])
    @pytest.mark.parametrize("name", list(CASES))
    def test_attention(benchmark, name, impl):
        make, case_args = CASES[name]
        benchmark.group = name
        benchmark(make(*case_args)[impl])
except ImportError:  # the CLI works without pytest
    pass


if __name__ == "__main__":
    main()
