"""gpt_fast against CTranslate2 (a C++ inference engine) and transformers at the GPT-1 shape, in one process.

    pip install "gpt_fast[peers]"        # ctranslate2
    python benchmarks/bench_peers.py                       # gpt_fast at this CPU's best tier and at avx2
    python benchmarks/bench_peers.py --tiers avx2 --out x.json   # gpt_fast's kernels capped at AVX2 only

Random weights (seed 0) at the GPT-1 shape, converted to CTranslate2 by ctranslate2_gpt.py. First the parity
check: log-probabilities of every position of a 64-token prompt against gpt_fast's eager path in float64 (the
oracle); gpt_fast fp32 and CTranslate2 float32 must be within 3x the error of the plain-PyTorch fp32 path plus one
fp32 ulp of the largest log-prob (tests/accuracy.py's rule); CTranslate2 int8's error is reported. Then, alternating
in each round (so drift hits all alike): batch-1 greedy decode of `--new-tokens` after a `--prompt`-token prompt
(time to first token; tok/s over the later tokens, from the times each token is handed out) and a prefill of
`--prefill` tokens (one new token), for gpt_fast fp32 / bf16 (default backend; the sdpa backend for prefill only)
at each of `--tiers` (default: this CPU's level and avx2, capped per call through GPT_FAST_CPU_ISA),
CTranslate2 float32 / int8 (+ bfloat16 where it supports it), transformers fp32 (its decode sampled at 5 lengths and
integrated, as `gpt-fast bench` does: it has no KV cache). Threads: torch.set_num_threads and CTranslate2's
intra_threads both `--threads`. CTranslate2 runs in child processes (ctranslate2_worker.py), one per GEMM backend:
float32 with MKL (CT2_USE_MKL=1, as on Intel; the issue asks for it on AMD) and with CTranslate2's own choice
(oneDNN on AMD), int8 with its own choice (MKL's int8 on AMD is ~10x slower); ratios take its faster backend.
Figures are medians of the rounds; the roofline is bytes read per token (weights once, KV cache at the mean context)
over the read bandwidth measured between rounds (as gpt_fast.cli.benchmark.ReadBandwidth, on the same clock).
On a shared machine `--threads 1 --cpu-time` times everything on CPU time instead (CTranslate2's in its child).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.cli import benchmark as bench
from gpt_fast.ops import cpu_isa
from gpt_fast.ops.cpu_isa import cpu_vendor

HERE = os.path.dirname(os.path.abspath(__file__))
CLOCK = time.perf_counter  # --cpu-time: time.process_time (this process's CPU time; CTranslate2's in its child)
PAUSE = 0.3  # s between candidates: the previous runtime's OpenMP threads stop spinning (KMP/GOMP block time)


def gpt_fast_model(base, dtype, backend=None, quantization=None):
    model = OpenAIGPTLMHeadModel(base.config, attn_implementation=backend)
    model.load_state_dict(base.state_dict())
    model = model.to(dtype).eval()
    return model.quantize(quantization) if quantization else model


def parity(base, peers: dict, ids: torch.Tensor, quantizations=()) -> dict:
    """Max |log-prob error| and mean KL(reference || it) of the next-token distributions of gpt_fast fp32 (and of
    gpt_fast bf16 quantized as each of `quantizations`), PyTorch's own fp32 path (gpt_fast eager: transformers'
    math) and each peer ({name: ids -> (B, T, V) log-probs}) against gpt_fast's eager path in float64, and the
    tolerance."""
    with torch.inference_mode():
        reference = torch.log_softmax(gpt_fast_model(base, torch.float64, "eager")(ids).logits, -1)
        ours = {"pytorch fp32 (eager)": gpt_fast_model(base, torch.float32, "eager"),
                "gpt_fast fp32": gpt_fast_model(base, torch.float32)}
        ours.update({f"gpt_fast bf16 {q}": gpt_fast_model(base, torch.bfloat16, quantization=q)
                     for q in quantizations})
        outputs = {name: torch.log_softmax(model(ids).logits.double(), -1) for name, model in ours.items()}
    outputs.update({name: torch.as_tensor(peer(ids)) for name, peer in peers.items()})
    errors = {name: (out.double() - reference).abs().max().item() for name, out in outputs.items()}
    kl = {name: (reference.exp() * (reference - out.double())).sum(-1).mean().item() for name, out in outputs.items()}
    one_ulp = torch.finfo(torch.float32).eps * reference.abs().max().item()
    return {"reference": "gpt_fast eager, float64", "max_abs_log_prob_error": errors, "mean_kl": kl,
            "tolerance": 3 * errors["pytorch fp32 (eager)"] + one_ulp,
            "log_prob_range": [reference.min().item(), reference.max().item()]}


def measure_gpt_fast(model, backend, prompt, new_tokens):
    model.set_attn_implementation(backend)
    streamer = Stamps()
    start = CLOCK()
    out = bench.generate_greedy(model, prompt, new_tokens, streamer)
    first, last = streamer.times[1], streamer.times[-1]
    return first - start, (last - first) / (new_tokens - 1), out[0, prompt.shape[1]:].tolist()


def measure_transformers(model, prompt, new_tokens):
    ttft, samples = bench.sampled_generation(model, prompt, new_tokens)
    return ttft, bench.integrate_steps(samples) / (new_tokens - 1), None


def capped(tier, fn):
    """fn run with gpt_fast's kernels capped at `tier` (GPT_FAST_CPU_ISA, read by every kernel call and plan)."""
    def run(*args):
        saved = os.environ.get(cpu_isa.ENV)
        os.environ[cpu_isa.ENV] = tier
        try:
            return fn(*args)
        finally:
            if saved is None:
                del os.environ[cpu_isa.ENV]
            else:
                os.environ[cpu_isa.ENV] = saved
    return run


def candidates(base, peers, hf, dtypes, tiers, quantizations=()):
    """{name: (decode(prompt, n) -> (ttft, s/token, ids) or None, prefill(ids) -> seconds)}; gpt_fast once per
    tier, named "gpt_fast <dtype> [<tier>]" (quantized: "gpt_fast bf16 int8 [<tier>]")."""
    out = {}
    for q in quantizations:
        model = gpt_fast_model(base, torch.bfloat16, quantization=q)
        for tier in tiers:
            out[f"gpt_fast bf16 {q} [{tier}]"] = (
                capped(tier, lambda p, n, m=model: measure_gpt_fast(m, None, p, n)),
                capped(tier, lambda ids, m=model: _timed(lambda: bench.prefill(m, ids))))
    for dtype_name, dtype in dtypes.items():
        model = gpt_fast_model(base, dtype)
        for tier in tiers:
            out[f"gpt_fast {dtype_name} [{tier}]"] = (
                capped(tier, lambda p, n, m=model: measure_gpt_fast(m, None, p, n)),
                capped(tier, lambda ids, m=model: _timed(lambda: (m.set_attn_implementation(None),
                                                                  bench.prefill(m, ids)))))
            out[f"gpt_fast {dtype_name} sdpa [{tier}]"] = (
                None, capped(tier, lambda ids, m=model: _timed(lambda: (m.set_attn_implementation("sdpa"),
                                                                        bench.prefill(m, ids)))))
    for name, (worker, compute_type) in peers.items():
        out[name] = (lambda p, n, w=worker, t=compute_type: w.decode(t, p[0].tolist(), n),
                     lambda ids, w=worker, t=compute_type: w.prefill(t, ids[0].tolist()))
    if hf is not None:
        out["transformers fp32"] = (lambda p, n: measure_transformers(hf, p, n),
                                    lambda ids: _timed(lambda: bench.prefill(hf, ids)))
    return out


def _timed(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


class ReadBandwidth(bench.ReadBandwidth):
    """gpt-fast bench's read bandwidth (best of a 256 MiB sum and matrix-vector product), timed on CLOCK."""

    def __init__(self):
        super().__init__(torch.device("cpu"))

    def measure(self, times: int = 3) -> float:
        nbytes = self.matrix.numel() * self.matrix.element_size()
        for _ in range(times):
            for fn in (self.matrix.sum, lambda: torch.mv(self.matrix, self.vector)):
                self.best = max(self.best, nbytes / _timed(fn))
        return self.best


class Stamps(bench.TimingStreamer):
    """When generate() hands out each token, on CLOCK."""

    def put(self, value) -> None:
        self.times.append(CLOCK())


def default_peers(supported) -> list[str]:
    """float32 with MKL (as the issue asks) and with CTranslate2's own choice (oneDNN on AMD), int8 with its own
    choice (MKL's int8 GEMM on AMD is ~10x slower), bfloat16 where this CPU build has it."""
    peers = ["float32:mkl", "float32:default", "int8:default"]
    return peers + (["bfloat16:default"] if "bfloat16" in supported else [])


def first_difference(a, b) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--tiers", nargs="+", default=None,
                        help="gpt_fast kernel tiers (GPT_FAST_CPU_ISA caps) measured side by side in each round; "
                             "default: this CPU's level (capped by GPT_FAST_CPU_ISA if set) and avx2")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time on process CPU time (with --threads 1: the cost without the time spent "
                             "descheduled on a shared machine); transformers is left out")
    parser.add_argument("--ctranslate2", nargs="+", default=None, metavar="TYPE:BACKEND",
                        help="CTranslate2 compute type and GEMM backend (default, mkl: CT2_USE_MKL=1, dnnl: "
                             "CT2_USE_MKL=0) of each peer; default: float32:mkl float32:default int8:default, plus "
                             "bfloat16:default where supported")
    parser.add_argument("--quantization", default="",
                        help="comma-separated int8,int4: also gpt_fast bf16 quantized so (int4: groups of 32)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_peers_<tier>.json)")
    args = parser.parse_args()
    if args.cpu_time:
        if args.threads != 1:
            parser.error("--cpu-time needs --threads 1 (idle OpenMP threads spin, and would count)")
        global CLOCK
        CLOCK, args.no_transformers = time.process_time, True
    import ctranslate2
    import ctranslate2_gpt
    from ctranslate2_worker import Worker

    torch.set_num_threads(args.threads)
    tier, load = cpu_isa.level(), os.getloadavg()
    print(f"{bench.cpu_name()} ({cpu_vendor()}), gpt_fast tier {tier}, {args.threads} threads, "
          f"torch {torch.__version__}, ctranslate2 {ctranslate2.__version__}, load {load[0]:.2f}", flush=True)
    torch.manual_seed(0)
    base = OpenAIGPTLMHeadModel(OpenAIGPTConfig()).eval()
    workdir = tempfile.mkdtemp(prefix="gpt_fast_ct2_")
    ctranslate2_gpt.convert(base.state_dict(), base.config, workdir)
    specs = args.ctranslate2 or default_peers(ctranslate2.get_supported_compute_types("cpu"))
    by_backend = {}
    for spec in specs:
        compute_type, backend = spec.split(":")
        by_backend.setdefault(backend, []).append(compute_type)
    workers = {b: Worker(workdir, types, args.threads, b, CLOCK.__name__) for b, types in by_backend.items()}
    backends = {b: w.describe() for b, w in workers.items()}
    for b, lines in backends.items():
        print(f"ctranslate2 [{b}]: " + "; ".join(lines), flush=True)
    peers = {f"ctranslate2 {spec}": (workers[spec.split(":")[1]], spec.split(":")[0]) for spec in specs}

    ids = torch.randint(0, base.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(1))
    quantizations = [q for q in args.quantization.split(",") if q]
    check = parity(base, {name: lambda x, w=w, t=t: w.log_probs(t, x.tolist()) for name, (w, t) in peers.items()},
                   ids, quantizations)
    print(f"parity vs {check['reference']} (log-probs in {check['log_prob_range']}), tolerance "
          f"{check['tolerance']:.3g}: " + ", ".join(f"{k} {v:.3g}" for k, v in check["max_abs_log_prob_error"].items()),
          flush=True)
    print("mean KL to the float64 reference: " + ", ".join(f"{k} {v:.3g}" for k, v in check["mean_kl"].items()))
    for name, error in check["max_abs_log_prob_error"].items():
        if ("fp32" in name or "float32" in name) and error > check["tolerance"]:
            sys.exit(f"parity check failed for {name}: no speed comparison")

    hf = None if args.no_transformers else bench.make_transformers_model(copy.deepcopy(base))
    tiers = args.tiers or list(dict.fromkeys([tier, "avx2"]))
    runs = candidates(base, peers, hf, {"fp32": torch.float32, "bf16": torch.bfloat16}, tiers, quantizations)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, base.config.vocab_size, (1, args.prompt), generator=gen)
    long_prompt = torch.randint(0, base.config.vocab_size, (1, args.prefill), generator=gen)
    for decode, fill in runs.values():  # warm-up: packing, first-call allocations, GEMM selection
        if decode is not None:
            decode(prompt, 4)
        fill(long_prompt[:, :64])
    bandwidth = ReadBandwidth()
    samples = {name: {"ttft": [], "per_token": [], "prefill": []} for name in runs}
    tokens = {}
    for r in range(args.rounds):
        for name, (decode, fill) in runs.items():
            time.sleep(PAUSE)
            if decode is not None:
                ttft, per_token, out = decode(prompt, args.new_tokens)
                samples[name]["ttft"].append(ttft)
                samples[name]["per_token"].append(per_token)
                tokens[name] = out
            time.sleep(PAUSE)
            samples[name]["prefill"].append(fill(long_prompt))
        bandwidth.measure(1)
        print(f"round {r + 1}/{args.rounds} done, read bandwidth {bandwidth.best / 1e9:.1f} GB/s", flush=True)

    context = args.prompt + args.new_tokens / 2
    fp32_bytes = bench.bytes_per_token(base, context)  # base is float32; bf16 reads half the bytes
    roofline = {"fp32": bandwidth.best / fp32_bytes, "bf16": 2 * bandwidth.best / fp32_bytes}
    rows = {}
    for name, s in samples.items():
        med = {k: statistics.median(v) if v else None for k, v in s.items()}
        rate = 1 / med["per_token"] if med["per_token"] else None
        impl = name.split(" [")[0]  # without the tier, whose name may hold "bf16"
        precision = (None if " int" in impl else "bf16" if "bf16" in impl or "bfloat16" in impl else
                     "fp32" if "fp32" in impl or "float32" in impl else None)
        rows[name] = {"ttft_ms": med["ttft"] and med["ttft"] * 1e3, "decode_tok_s": rate,
                      "decode_tok_s_best": 1 / min(s["per_token"]) if s["per_token"] else None,
                      "prefill_ms": med["prefill"] * 1e3, "prefill_ms_best": min(s["prefill"]) * 1e3,
                      "roofline_fraction": rate / roofline[precision] if rate and precision else None}
    ratios = {t: ratios_of(rows, t) for t in tiers}
    ratios_best = {t: ratios_of(rows, t, best=True) for t in tiers}
    for d in ("fp32", "bf16"):  # the per-CPU choice of tier, measured in the same rounds
        for t in tiers[1:]:
            for r, key in ((ratios, "decode_tok_s"), (ratios_best, "decode_tok_s_best")):
                r[tiers[0]][f"decode gpt_fast {d} [{tiers[0]}] / [{t}]"] = (
                    rows[f"gpt_fast {d} [{tiers[0]}]"][key] / rows[f"gpt_fast {d} [{t}]"][key])
    ours = f"gpt_fast fp32 [{tiers[0]}]"
    greedy = {f"{name} vs {ours}": first_difference(tokens[ours], out)
              for name, out in tokens.items() if out is not None and name != ours}
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "machine": {"cpu": bench.cpu_name(), "vendor": cpu_vendor(), "gpt_fast_cpu_isa": tier,
                          "GPT_FAST_CPU_ISA": os.environ.get("GPT_FAST_CPU_ISA"), "threads": args.threads,
                          "torch": torch.__version__, "ctranslate2": ctranslate2.__version__,
                          "ctranslate2_backends": backends,
                          "load_before": load, "load_after": os.getloadavg()},
              "options": {**vars(args), "tiers": tiers}, "parity": check, "greedy": greedy,
              "read_bandwidth_gb_s": bandwidth.best / 1e9,
              "roofline_tok_s": roofline, "rows": rows, "ratios": ratios, "ratios_of_best_rounds": ratios_best}
    print(format_rows(rows, ratios, roofline))
    print("from the best rounds:\n" + "\n".join(f"[{t}] {k}: {v:.2f}" for t, r in ratios_best.items()
                                               for k, v in r.items() if v is not None))
    print(f"load {load[0]:.2f} before, {result['machine']['load_after'][0]:.2f} after; greedy: {greedy}")
    path = args.out or os.path.join(HERE, "results", f"bench_peers_{tier}.json")
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print(f"wrote {path}")
    for worker in workers.values():
        worker.close()


def ratios_of(rows: dict, tier: str, best: bool = False) -> dict:
    """The issue's target ratios for gpt_fast at `tier` (> 1: the first is faster); against CTranslate2, its
    fastest backend per compute type. best: from the best rounds instead of the medians."""
    rows = {n: {k: r[f"{k}_best"] if best else r[k] for k in ("decode_tok_s", "prefill_ms")} for n, r in rows.items()}

    def fastest(prefix, key):
        names = [n for n in rows if n.startswith(prefix) and rows[n][key] is not None]
        pick = max if key == "decode_tok_s" else min
        return pick(names, key=lambda n: rows[n][key], default=None)

    def ratio(a, b, key):
        if a is None or b is None or a not in rows or b not in rows:
            return None
        x, y = rows[a][key], rows[b][key]
        return x / y if key == "decode_tok_s" else y / x

    f32, b16, f32s = (f"gpt_fast {d} [{tier}]" for d in ("fp32", "bf16", "fp32 sdpa"))
    ct2_f32, ct2_i8 = fastest("ctranslate2 float32", "decode_tok_s"), fastest("ctranslate2 int8", "decode_tok_s")
    ct2_f32_fill, ct2_i8_fill = fastest("ctranslate2 float32", "prefill_ms"), fastest("ctranslate2 int8", "prefill_ms")
    return {f"decode gpt_fast fp32 / {ct2_f32} (target >= 1.8)": ratio(f32, ct2_f32, "decode_tok_s"),
            f"decode gpt_fast bf16 / {ct2_i8} (target >= 1.2)": ratio(b16, ct2_i8, "decode_tok_s"),
            "decode gpt_fast bf16 / gpt_fast fp32 (target >= 1.7)":
            ratio(b16, f32, "decode_tok_s"),
            "decode gpt_fast fp32 / transformers fp32 (target >= 4)":
            ratio(f32, "transformers fp32", "decode_tok_s"),
            "prefill gpt_fast fp32 fused / sdpa (target >= 1.2)":
            ratio(f32, f32s, "prefill_ms"),
            f"prefill gpt_fast fp32 / {ct2_f32_fill}": ratio(f32, ct2_f32_fill, "prefill_ms"),
            f"prefill gpt_fast bf16 / {ct2_i8_fill}": ratio(b16, ct2_i8_fill, "prefill_ms"),
            f"decode gpt_fast int8 / {ct2_i8} (target >= 1.5)": ratio(f"gpt_fast bf16 int8 [{tier}]", ct2_i8,
                                                                        "decode_tok_s")}


def format_rows(rows: dict, ratios: dict, roofline: dict) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [f"{'implementation (medians; best)':<34}{'TTFT ms':>9}{'decode tok/s':>14}{'best':>8}{'% roofline':>12}"
             f"{'prefill ms':>12}{'best':>9}"]
    for name, r in rows.items():
        roof = None if r["roofline_fraction"] is None else 100 * r["roofline_fraction"]
        lines.append(f"{name:<34}{fmt(r['ttft_ms'], '.1f'):>9}{fmt(r['decode_tok_s'], '.1f'):>14}"
                     f"{fmt(r['decode_tok_s_best'], '.1f'):>8}{fmt(roof, '.0f'):>12}{r['prefill_ms']:>12.1f}"
                     f"{r['prefill_ms_best']:>9.1f}")
    lines.append("roofline tok/s: " + ", ".join(f"{k} {v:.1f}" for k, v in roofline.items()))
    lines += [f"[{t}] {k}: {fmt(v, '.2f')}" for t, r in ratios.items() for k, v in r.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
