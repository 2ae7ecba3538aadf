"""Where one training step's time goes: torch.profiler over one step of bench_train_step.py's configurations
(GPT-1 shape, B=4, T=256, forward + backward + fused AdamW), each op's self time put in a kind (GEMM forward /
backward, attention, layernorm, GELU, loss, casts/copies, elementwise, embedding, optimizer).

    python benchmarks/profile_train_step.py [--dtype bf16] [--threads 2] [--impl gpt_fast transformers]
                                            [--logits] [--top 25] [--quick]

The kind of an op comes from its name, its input shapes and where it runs: an op under the optimizer step is
"optimizer"; anything inside the fused LM-head loss or on a tensor with a vocabulary-sized dimension (both models'
LM-head GEMMs, logits, softmax) is "LM head + loss"; an op on a (..., T, T) tensor is "attention"; "backward" is
anything under the autograd engine. Times are the
profiler's self CPU time on the calling thread (with 2 threads an op's time is its wall time, its worker
threads included); the step's wall and process CPU time (all threads) are measured in the same run, without the
profiler, and printed first.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from bench_train_step import FULL, QUICK, TRANSFORMERS, build
from torch.profiler import ProfilerActivity, profile, record_function

GEMM = ("aten::mm", "aten::addmm", "aten::baddbmm", "mkldnn::_linear_pointwise")  # bmm: attention
KINDS = [  # (kind, substrings of the op name), the first match wins
    ("LM head + loss", ("log_softmax", "nll_loss", "cross_entropy")),
    ("attention", ("flash_attention", "scaled_dot_product", "_softmax", "softmax_backward", "aten::where",
                   "masked_fill", "aten::bmm")),
    ("layernorm", ("layer_norm", "add_layernorm")),
    ("gelu", ("gelu", "aten::tanh", "aten::pow")),
    ("dropout", ("dropout", "bernoulli")),
    ("casts/copies", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous")),
    ("embedding", ("embedding",)),
    ("reductions", ("aten::sum",)),
    ("elementwise", ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::rsub", "aten::fill_",
                     "aten::zero_", "aten::exp", "aten::log", "aten::amax", "aten::gather", "aten::scatter")),
]


def kind_of(event, ancestors: list[str], vocab: int) -> str:
    """The op's kind; "LM head + loss" takes everything in the fused loss and any op on a (.., vocab) tensor (the
    logits, their gradient, the head's GEMMs), "attention" any op on a (.., T, T) tensor (scores, probabilities)."""
    if any(a.startswith("Optimizer.step") or a == "optimizer" for a in ancestors):
        return "optimizer"
    shapes = [s for s in event.input_shapes or [] if isinstance(s, list)]
    if (any("LinearCrossEntropy" in a for a in ancestors) or "LinearCrossEntropy" in event.name
            or any(vocab in s for s in shapes)) and not any("mbedding" in a for a in [event.name, *ancestors]):
        return "LM head + loss"
    phase = "backward" if any(a == "backward" for a in ancestors) else "forward"
    if event.name in GEMM:
        return f"GEMM {phase}"
    if any(len(s) == 4 and s[-1] == s[-2] > 1 for s in shapes):
        return "attention"
    for kind, needles in KINDS:
        if any(n in event.name for n in needles):
            return kind
    return "other"


def make_step(impl: str, model, optimizer, shape: dict, dtype: str, fused: bool):
    ids = torch.randint(0, model.config.vocab_size, (shape["batch"], shape["seq_len"]),
                        generator=torch.Generator().manual_seed(1))
    extra = {} if impl == TRANSFORMERS else {"return_logits": not fused}

    def step():
        with record_function("forward"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(ids, labels=ids, **extra).loss
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return step


def profile_step(step, top: int, vocab: int) -> None:
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    events = prof.events()
    by_kind: dict[str, float] = collections.defaultdict(float)
    by_op: dict[tuple, float] = collections.defaultdict(float)
    calls: dict[tuple, int] = collections.defaultdict(int)
    for e in events:
        ancestors, parent = [], e.cpu_parent
        while parent is not None:
            ancestors.append(parent.name)
            parent = parent.cpu_parent
        kind = kind_of(e, ancestors, vocab)
        us = e.self_cpu_time_total
        by_kind[kind] += us
        key = (kind, e.name, str(e.input_shapes)[:90])
        by_op[key] += us
        calls[key] += 1
    total = sum(by_kind.values())
    print(f"profiled step: {total / 1e3:.0f} ms of self time")
    print("| kind | ms | share |\n| --- | --- | --- |")
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {us / 1e3:.1f} | {100 * us / total:.1f}% |")
    print(f"\ntop {top} ops (kind, name, input shapes): ms, calls")
    for key, us in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {us / 1e3:8.1f} ms {calls[key]:4d}x  {key[0]:<14} {key[1]:<42} {key[2]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--impl", nargs="+", default=["gpt_fast", TRANSFORMERS])
    parser.add_argument("--logits", action="store_true", help="gpt_fast with logits + cross-entropy, not fused")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps (alternating) before the profile")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else FULL
    steps, vocabs = {}, {}
    for impl in args.impl:
        model, optimizer = build(impl, shape)
        vocabs[impl] = model.config.vocab_size
        steps[impl] = make_step(impl, model, optimizer, shape, args.dtype, not args.logits)
        steps[impl]()  # warm-up: AdamW's moments, caches
    times = collections.defaultdict(list)
    for _ in range(args.rounds):
        for impl, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            times[impl].append((time.perf_counter() - wall, time.process_time() - cpu))
    for impl, step in steps.items():
        walls, cpus = zip(*times[impl])
        print(f"\n## {impl}, {args.dtype}{' logits' if args.logits else ''}, {args.threads} threads: step wall "
              f"{min(walls):.3f} s (best of {args.rounds}), process CPU {min(cpus):.3f} s")
        profile_step(step, args.top, vocabs[impl])


if __name__ == "__main__":
    main()
