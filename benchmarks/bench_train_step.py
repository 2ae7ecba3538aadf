"""One training step (forward + backward + AdamW) of GPT-1, gpt_fast against transformers' OpenAIGPTLMHeadModel,
in one run: tokens/s and peak memory, fp32 and bf16 autocast, gpt_fast's fused LM-head loss on and off, gradient
checkpointing on and off (transformers' OpenAIGPT does not support it: supports_gradient_checkpointing is False),
and with checkpointing the optimizer step inside backward (gpt_fast/training/optimizer_in_backward.py).

    python benchmarks/bench_train_step.py [--threads 2] [--rounds 3] [--own-process 3] [--out results/....json]
    python benchmarks/bench_train_step.py --quick    # a small model: the smoke test tests/test_bench_train_step.py

Both models are GPT-1's config (dropout 0.1 as configured) in train mode, float32 weights, fused AdamW (lr 1e-4);
the batch is B x T random token ids with labels = ids (both shift them). Time: the configurations run alternately,
one step each per round (wall clock, after a warm-up step); the median and best of the rounds. Memory: each
configuration in a fresh child process, one warm-up step (so AdamW's moments exist), gradients freed, the peak-RSS
counter reset (/proc/self/clear_refs), one step: the peak RSS growth over the RSS before it (activations,
gradients, temporaries; the weights and AdamW moments, equal for both, are not in it), and the absolute peak RSS.

In one process the models share glibc's heap: what one configuration frees another reuses, so each pays a different
share of the page faults of its large temporaries than it would alone (on a Zen 4 VM, 2026-12-07, transformers' bf16
step took 4.5-5.2 s beside gpt_fast's model and 3.1-3.3 s alone, gpt_fast's 2.5-2.7 s either way). `--own-process N`
also times N steps of each configuration in its child, after its memory step, the children one at a time: the step
a user training one model per process gets (the "own process" columns).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from timing import machine_description, time_alternating

import gpt_fast
from gpt_fast.cli.machine import reset_peak_rss, status_bytes
from gpt_fast.training.allocator import keep_freed_memory, release_freed_memory
from gpt_fast.training.optimizer_in_backward import OptimizerInBackward

HERE = Path(__file__).resolve().parent
FULL = dict(model={}, batch=4, seq_len=256)  # GPT-1: 12 x 768, 12 heads, 512 positions, 40478 tokens
QUICK = dict(model=dict(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=64), batch=2, seq_len=32)
TRANSFORMERS = "transformers"


def configurations() -> list[dict]:
    """impl: "gpt_fast" or "transformers"; fused: gpt_fast's fused loss; dtype: fp32 or bf16 (autocast);
    in_backward: the optimizer step inside backward (with checkpointing and the fused loss only)."""
    found = []
    for dtype in ("fp32", "bf16"):
        for checkpointing in (False, True):
            for impl, fused in (("gpt_fast", True), ("gpt_fast", False), (TRANSFORMERS, False)):
                if impl == TRANSFORMERS and checkpointing:
                    continue  # not supported by transformers' OpenAIGPT
                found.append(dict(impl=impl, fused=fused, dtype=dtype, checkpointing=checkpointing,
                                  in_backward=False))
        found.append(dict(impl="gpt_fast", fused=True, dtype=dtype, checkpointing=True, in_backward=True))
    return found


def name(config: dict) -> str:
    impl = config["impl"] + (" fused loss" if config["fused"] else " logits loss" if config["impl"] != TRANSFORMERS
                             else "")
    return (f"{impl}, {config['dtype']}" + (", checkpointing" if config["checkpointing"] else "")
            + (", optimizer in backward" if config["in_backward"] else ""))


def build(impl: str, shape: dict):
    """(model in train mode, fused AdamW over it), seeded."""
    torch.manual_seed(0)
    if impl == TRANSFORMERS:
        import transformers
        model = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**shape["model"]))
    else:
        model = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**shape["model"]))
    return model.train(), torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def make_step(model, optimizer, config: dict, shape: dict):
    """A function running one step of `config` on the model (which several configurations may share)."""
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (shape["batch"], shape["seq_len"]), generator=torch.Generator().manual_seed(1))
    extra = {} if config["impl"] == TRANSFORMERS else {"return_logits": not config["fused"]}

    def step():
        if config["checkpointing"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif config["impl"] != TRANSFORMERS:
            model.gradient_checkpointing_disable()
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if config["dtype"] == "bf16"
                    else contextlib.nullcontext())
        # The hooks are on for this configuration's steps only: the model is shared with the others.
        in_backward = (OptimizerInBackward(model, optimizer) if config["in_backward"] else contextlib.nullcontext())
        with in_backward:
            with autocast:
                loss = model(ids, labels=ids, **extra).loss
            loss.backward()
            optimizer.step()  # with the optimizer in backward: no gradient left, nothing to do
            optimizer.zero_grad(set_to_none=True)
    return step


def measure_in_process(config: dict, shape: dict, timed_steps: int) -> dict:
    """In this (fresh) process: the step's peak RSS growth and the absolute peak, in bytes; then the wall time of
    timed_steps further steps (seconds), the configuration alone in its process."""
    model, optimizer = build(config["impl"], shape)
    step = make_step(model, optimizer, config, shape)
    step()  # AdamW's moments made; gradients freed
    gc.collect()
    release_freed_memory()  # what the warm-up freed but glibc kept (its heap top) is not in use: out of VmRSS
    reset_peak_rss()  # VmHWM := VmRSS
    before = status_bytes("VmRSS")
    step()
    found = {"growth": status_bytes("VmHWM") - before, "peak": status_bytes("VmHWM"), "seconds": []}
    for _ in range(timed_steps):
        start = time.perf_counter()
        step()
        found["seconds"].append(time.perf_counter() - start)
    return found


def measure_in_child(config: dict, args) -> dict:
    command = [sys.executable, __file__, "--measure", json.dumps(config), "--threads", str(args.threads),
               "--own-process", str(args.own_process)]
    done = subprocess.run(command + (["--quick"] if args.quick else []), check=True, capture_output=True, text=True,
                          cwd=HERE, timeout=args.child_timeout)
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(growth: int, baseline_growth: int) -> float | None:
    """growth / baseline_growth; None when the baseline's step grew the RSS by nothing (a tiny model can run in
    memory the warm-up step freed), so no ratio exists."""
    return growth / baseline_growth if baseline_growth > 0 else None


def run(args) -> dict:
    shape = QUICK if args.quick else FULL
    kept = keep_freed_memory() if args.keep_freed_memory else False  # before any model: both time alike
    configs = configurations()
    models = {impl: build(impl, shape) for impl in ("gpt_fast", TRANSFORMERS)}
    steps = {name(c): make_step(*models[c["impl"]], c, shape) for c in configs}
    load_before = os.getloadavg()
    seconds = time_alternating(steps, repeats=args.rounds, warmup=1)
    load_after = os.getloadavg()
    # Children that only measure memory (each its own peak RSS) run two at a time: no timing is affected. Timed
    # ones run alone.
    with ThreadPoolExecutor(max_workers=1 if args.own_process else 2) as pool:
        children = dict(zip(map(name, configs), pool.map(lambda c: measure_in_child(c, args), configs)))
    tokens = shape["batch"] * shape["seq_len"]
    rows = []
    for c in configs:
        baseline = name(dict(c, impl=TRANSFORMERS, fused=False, checkpointing=False, in_backward=False))
        median, base_median = statistics.median(seconds[name(c)]), statistics.median(seconds[baseline])
        child, base_child = children[name(c)], children[baseline]  # each one's own process
        rows.append(dict(c, name=name(c), seconds=seconds[name(c)], median_s=median, best_s=min(seconds[name(c)]),
                         tokens_per_s=tokens / median, speed_vs_transformers=base_median / median,
                         best_speed_vs_transformers=min(seconds[baseline]) / min(seconds[name(c)]),
                         step_growth_bytes=child["growth"], peak_rss_bytes=child["peak"],
                         memory_vs_transformers=ratio(child["growth"], base_child["growth"])))
        if args.own_process:
            child_median = statistics.median(child["seconds"])
            rows[-1].update(own_process_seconds=child["seconds"], own_process_tokens_per_s=tokens / child_median,
                            own_process_speed_vs_transformers=statistics.median(base_child["seconds"]) / child_median)
    return {"machine": machine_description(), "threads": args.threads, "quick": args.quick,
            "shape": shape, "tokens_per_step": tokens, "rounds": args.rounds,
            "loadavg_before": load_before, "loadavg_after": load_after,
            "freed_memory": "kept" if kept else "glibc's default",
            "memory": "peak RSS growth over one step in a fresh process per configuration (after a warm-up step), "
                      "with glibc's default allocator settings",
            "time": "wall clock, configurations alternating, one step per round after one warm-up step",
            "own_process_steps": args.own_process,
            "results": rows}


def table(report: dict) -> str:
    own = report.get("own_process_steps", 0)
    lines = [f"{report['machine']}; B={report['shape']['batch']} T={report['shape']['seq_len']}; "
             f"load {report['loadavg_before'][0]:.1f} -> {report['loadavg_after'][0]:.1f}; timed with freed memory "
             f"{'kept' if report['freed_memory'] == 'kept' else 'returned (glibc default)'}"
             + (f"; own process: {own} steps each, median" if own else ""),
             "| configuration | tokens/s (median) | speed vs transformers (median, best) | step memory MiB | "
             "memory vs transformers |" + (" own process: tokens/s | own process: vs transformers |" if own else ""),
             "| --- | --- | --- | --- | --- |" + (" --- | --- |" if own else "")]
    for r in report["results"]:
        lines.append(f"| {r['name']} | {r['tokens_per_s']:.0f} | {r['speed_vs_transformers']:.2f}x, "
                     f"{r['best_speed_vs_transformers']:.2f}x | {r['step_growth_bytes'] / 2**20:.0f} | "
                     f"{format_ratio(r['memory_vs_transformers'])} |"
                     + (f" {r['own_process_tokens_per_s']:.0f} | {r['own_process_speed_vs_transformers']:.2f}x |"
                        if own else ""))
    return "\n".join(lines)


def format_ratio(value: float | None) -> str:
    return "n/a (baseline grew 0)" if value is None else f"{value:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small model (a smoke test)")
    parser.add_argument("--out", type=Path, help="JSON report (default: benchmarks/results/bench_train_step"
                                                 "[_quick].json)")
    parser.add_argument("--child-timeout", type=float, default=900, help="seconds per memory measurement")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="time both models with glibc keeping freed memory mapped (gpt_fast/training/"
                             "allocator.py; as gpt-fast train does); memory is measured with the defaults")
    parser.add_argument("--own-process", type=int, default=0, metavar="N",
                        help="also time N steps of each configuration alone in its own process (after its memory "
                             "step; one child at a time)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child's job: one configuration, as JSON
    args = parser.parse_args()
    if args.threads < 1 or args.rounds < 1:
        parser.error("--threads and --rounds must be positive")
    if args.own_process < 0:
        parser.error("--own-process must be 0 or more")
    torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure_in_process(json.loads(args.measure), QUICK if args.quick else FULL,
                                            args.own_process)))
        return
    report = run(args)
    out = args.out or HERE / "results" / f"bench_train_step{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
