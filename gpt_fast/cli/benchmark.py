"""`gpt-fast bench`: generation latency and throughput at the GPT-1 shape with random weights (no download).

In one run, implementations alternating and the best of `repeats` kept for each figure:
- batch-1 time to first token (a 32-token prompt) and decode tokens/s ((N - 1) over the time from the first
  to the last new token), both from the times a streamer receives the tokens, for gpt_fast with each available
  attention backend
  and for transformers' generate when installed (it re-runs the whole sequence per token: no KV cache for
  OpenAIGPT), in each dtype;
  transformers re-runs the whole sequence per token, so by default its N-token run is not timed whole (it takes
  minutes on 2 cores): its step at length L costs what generate(max_new_tokens=1) costs on an L-token prompt,
  which is timed at 5 lengths spread over the N steps and integrated (--transformers-full times the real run);
- batch-8 decode tokens/s (gpt_fast, default backend);
- prefill latency of a 512-token prompt (gpt_fast: generate(max_new_tokens=1), which fills the KV cache and
  picks the first token; transformers: the forward with logits_to_keep=1);
- with quantizations (int8, int4): the default backend's model quantized (gpt_fast/quantization) run alongside,
  batch 1 and batch B, alternating with the others in every repeat; "x unquantized" is the median over the repeats
  of the unquantized model's time per token over the quantized one's in the same repeat (on a shared machine
  whose read bandwidth drifts between repeats, steadier than the ratio of the best-ofs);
- the memory-bandwidth roofline: bytes read per decoded token (every weight once, the tied LM head/embedding
  once, plus the KV cache at the mean context; for a quantized model its qweight/scales/zeros, and the token
  embedding only as the one row looked up when the head does not multiply by it: untied or quantized) over the
  read bandwidth measured in the same run (the best of a 256 MiB tensor sum and a 256 MiB matrix-vector
  product, taken once per repeat between the other runs), and each decode figure as a fraction of it.
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel, ops
from gpt_fast.cli.machine import cpu_name
from gpt_fast.ops import cpu_isa
from gpt_fast.quantization.layer import QuantizedLinear

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


@dataclass
class BenchOptions:
    dtypes: tuple[str, ...] = ("bf16", "fp32")
    prompt_length: int = 32
    new_tokens: int = 128
    repeats: int = 3
    batch: int = 8
    prefill_length: int = 512
    device: str = "cpu"
    transformers: bool = True
    transformers_full: bool = False  # time transformers' whole N-token generate (minutes) instead of sampling it
    quantizations: tuple[str, ...] = ()  # "int8", "int4": quantized copies of the default backend's model
    group_size: int = 32  # int4's group size
    config_overrides: dict = field(default_factory=dict)  # e.g. n_layer=2 for tests

    @classmethod
    def quick(cls, **overrides) -> "BenchOptions":
        return cls(**{"new_tokens": 32, "repeats": 2, "prefill_length": 256, **overrides})


@dataclass
class Row:
    dtype: str
    impl: str  # "gpt_fast[sdpa]", "transformers", ...
    batch: int
    ttft_ms: float | None = None
    decode_tok_s: float | None = None
    prefill_ms: float | None = None
    speedup_vs_transformers: float | None = None
    roofline_fraction: float | None = None
    quantization: str = "none"
    weights_mb_per_token: float | None = None  # weight bytes read per decode step (KV cache excluded)
    # quantized rows: median over the rounds of the unquantized model's seconds per token over this one's, each round
    # timing both back to back (on a shared machine whose bandwidth drifts, steadier than a ratio of best-ofs)
    speedup_vs_unquantized: float | None = None
    per_token_s_rounds: list[float] | None = None  # each round's seconds per decoded token (raw)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


class ReadBandwidth:
    """Bytes/s of reading 256 MiB (well beyond any cache): the best of a tensor sum and a matrix-vector product."""

    def __init__(self, device: torch.device):
        self.matrix = torch.ones(8192, 8192, dtype=torch.float32, device=device)  # 256 MiB
        self.vector = torch.ones(8192, dtype=torch.float32, device=device)
        self.device = device
        self.best = 0.0

    def measure(self, times: int = 3) -> float:
        nbytes = self.matrix.numel() * self.matrix.element_size()
        for _ in range(times):
            for fn in (self.matrix.sum, lambda: torch.mv(self.matrix, self.vector)):
                self.best = max(self.best, nbytes / timed(fn, self.device))
        return self.best


def _unread_rows(table: torch.Tensor) -> int:
    """Bytes of an embedding table a decode step does not read (it looks up one row)."""
    return (table.shape[0] - 1) * table.shape[1] * table.element_size()


def bytes_per_token(model, context: float, batch: int = 1) -> float:
    """Weight bytes read per decode step (shared tensors once, one position row; a quantized layer's qweight,
    scales and zeros; the token embedding whole when the LM head multiplies by it (tied, or wrapped around the
    tied Linear), else as the one row looked up: an untied or quantized head) + the KV cache."""
    config = model.config
    unique = {p.data_ptr(): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in unique)
    weights += sum(b.numel() * b.element_size() for m in model.modules() if isinstance(m, QuantizedLinear)
                   for b in m.buffers(recurse=False))
    positions = model.transformer.positions_embed.weight
    weights -= _unread_rows(positions)
    table = model.transformer.tokens_embed.weight
    head = getattr(model, "lm_head", None)
    if head is None or all(p.data_ptr() != table.data_ptr() for p in head.parameters()):
        weights -= _unread_rows(table)
    kv = 2 * config.n_layer * context * config.n_embd * positions.element_size() * batch
    return weights + kv


def gpt_fast_backends(device_type: str) -> list[str]:
    names = ["eager", "sdpa"]
    if ops.has_kernel("flash_attention", device_type):
        names.append("fused")
    return names


def build_models(options: BenchOptions, dtype: torch.dtype, base, hf_base) -> dict:
    """{impl name: (model, attention backend or None)} in the given dtype, with base's weights. The gpt_fast
    backends share one model (switched with set_attn_implementation before each measurement)."""
    device = torch.device(options.device)
    ours = OpenAIGPTLMHeadModel(base.config)
    ours.load_state_dict(base.state_dict())
    ours = ours.to(device=device, dtype=dtype).eval()
    models = {f"gpt_fast[{backend}]": (ours, backend) for backend in gpt_fast_backends(device.type)}
    default = gpt_fast_backends(device.type)[-1]
    for scheme in options.quantizations:
        quantized = OpenAIGPTLMHeadModel(copy.deepcopy(base.config))  # its own config: quantize() records itself
        quantized.load_state_dict(base.state_dict())
        quantized = quantized.to(device=device, dtype=dtype).quantize(scheme, options.group_size)
        models[quantized_name(default, scheme)] = (quantized, default)
    if hf_base is not None:
        models["transformers"] = (copy.deepcopy(hf_base).to(device=device, dtype=dtype).eval(), None)
    return models


def quantized_name(backend: str, scheme: str) -> str:
    return f"gpt_fast[{backend}] {scheme}"


def use(entry):
    model, backend = entry
    if backend is not None:
        model.set_attn_implementation(backend)
    return model


def make_transformers_model(base):
    try:
        import transformers
    except ImportError:
        return None
    hf_config = transformers.OpenAIGPTConfig(**{k: v for k, v in base.config.to_dict().items()
                                                if k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")})
    hf = transformers.OpenAIGPTLMHeadModel(hf_config)
    hf.load_state_dict(base.state_dict(), strict=False)
    transformers.logging.set_verbosity_error()
    return hf.eval()


class TimingStreamer:
    """Records when generate() hands out each token: put(prompt) comes first, then one put per new token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def generate_greedy(model, ids, new_tokens, streamer=None):
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, streamer=streamer)


def time_generation(model, ids, new_tokens) -> tuple[float, float]:
    """(time to first token, seconds per later token) of one generate call, from the token hand-out times."""
    streamer = TimingStreamer()
    start = time.perf_counter()
    generate_greedy(model, ids, new_tokens, streamer)
    first, last = streamer.times[1], streamer.times[-1]
    return first - start, (last - first) / max(new_tokens - 1, 1)


def sampled_generation(model, ids, new_tokens, points: int = 5) -> tuple[float, list[float]]:
    """transformers' generate re-runs the whole sequence for each token, so step s costs what generate(
    max_new_tokens=1) costs on a prompt of length T + s. Times that at `points` lengths spread over the steps of an
    N-token generation. Returns (time to first token, [(length, seconds)] for the later steps)."""
    T = ids.shape[1]
    ttft = timed(lambda: generate_greedy(model, ids, 1), ids.device)
    extended = torch.cat([ids, ids.new_zeros(1, new_tokens)], dim=1)  # (1, T + N); the ids do not matter
    lengths = sorted({T + 1 + round(i * (new_tokens - 2) / max(points - 1, 1)) for i in range(points)})
    return ttft, [(L, timed(lambda L=L: generate_greedy(model, extended[:, :L], 1), ids.device)) for L in lengths]


def integrate_steps(samples: list[tuple[int, float]]) -> float:
    """Seconds for every step between the first and last sampled lengths (trapezoid over the samples)."""
    if len(samples) == 1:
        return samples[0][1]
    total = samples[0][1]
    for (l0, t0), (l1, t1) in zip(samples, samples[1:]):
        total += (t0 + t1) / 2 * (l1 - l0 - 1) + t1  # the steps strictly between, then the step at l1
    return total


def prefill(model, ids):
    if isinstance(model, OpenAIGPTLMHeadModel):
        return generate_greedy(model, ids, 1)
    with torch.inference_mode():
        return model(ids, logits_to_keep=1).logits


def run(options: BenchOptions, log=sys.stderr) -> dict:
    device = torch.device(options.device)
    torch.manual_seed(0)
    base = OpenAIGPTLMHeadModel(OpenAIGPTConfig(**options.config_overrides)).eval()
    hf_base = make_transformers_model(base) if options.transformers else None
    vocab = base.config.vocab_size
    prompt = torch.randint(0, vocab, (1, options.prompt_length), device=device)
    batch_prompt = torch.randint(0, vocab, (options.batch, options.prompt_length), device=device)
    long_prompt = torch.randint(0, vocab, (1, options.prefill_length), device=device)
    N = options.new_tokens
    print(f"measuring read bandwidth on {device} ...", file=log, flush=True)
    bandwidth = ReadBandwidth(device)
    bandwidth.measure()
    rows = []
    for dtype_name in options.dtypes:
        models = build_models(options, DTYPES[dtype_name], base, hf_base)
        default = f"gpt_fast[{gpt_fast_backends(device.type)[-1]}]"  # what "auto" picks: the fastest
        best: dict[tuple[str, str], float] = {}
        batched = [default] + [quantized_name(default.removeprefix("gpt_fast[").rstrip("]"), q)
                               for q in options.quantizations]

        per_round: dict[tuple[str, str], list[float]] = {}

        def keep(key, seconds, best=best, per_round=per_round):
            best[key] = min(best.get(key, float("inf")), seconds)
            per_round.setdefault(key, []).append(seconds)

        def round_ratio(base_key, key, per_round=per_round):
            return statistics.median(b / q for b, q in zip(per_round[base_key], per_round[key]))

        for entry in models.values():  # warm-up (first-call allocations, oneDNN kernel selection)
            model = use(entry)
            generate_greedy(model, prompt, 2)
            prefill(model, long_prompt[:, :16])
        for repeat in range(options.repeats):
            for name, entry in models.items():
                model = use(entry)
                print(f"[{dtype_name} {repeat + 1}/{options.repeats}] {name}: batch 1, {N} new tokens",
                      file=log, flush=True)
                if entry[1] is None and not options.transformers_full:
                    ttft, samples = sampled_generation(model, prompt, N)
                    for length, seconds in samples:
                        keep((name, f"step@{length}"), seconds)
                    per_token = integrate_steps([(length, best[(name, f"step@{length}")])
                                                 for length, _ in samples]) / max(N - 1, 1)
                else:
                    ttft, per_token = time_generation(model, prompt, N)
                keep((name, "ttft"), ttft)
                keep((name, "per_token"), per_token)
                keep((name, "prefill"), timed(lambda model=model: prefill(model, long_prompt), device))
            for name in batched:
                print(f"[{dtype_name} {repeat + 1}/{options.repeats}] {name}: batch {options.batch}",
                      file=log, flush=True)
                ttft, per_token = time_generation(use(models[name]), batch_prompt, N)
                keep(("batch " + name, "ttft"), ttft)
                keep(("batch " + name, "per_token"), per_token)
            bandwidth.measure(1)
        context = options.prompt_length + N / 2
        hf_rate = None
        if "transformers" in models:
            hf_rate = 1 / best[("transformers", "per_token")]
        for name, (model, backend) in models.items():
            measured = model if backend is not None else models[default][0]  # transformers: the same weights
            scheme = "none" if measured.quantization is None else measured.quantization.scheme
            weights_mb = bytes_per_token(measured, 0) / 1e6
            rate = 1 / best[(name, "per_token")]
            quantized = scheme != "none"
            rows.append(Row(dtype_name, name, 1, best[(name, "ttft")] * 1e3, rate, best[(name, "prefill")] * 1e3,
                            None if hf_rate is None else rate / hf_rate, rate * bytes_per_token(measured, context),
                            scheme, weights_mb,
                            round_ratio((default, "per_token"), (name, "per_token")) if quantized else None,
                            per_round[(name, "per_token")]))
            if name in batched:
                rate = options.batch / best[("batch " + name, "per_token")]
                rows.append(Row(dtype_name, name, options.batch, best[("batch " + name, "ttft")] * 1e3, rate,
                                roofline_fraction=rate / options.batch * bytes_per_token(measured, context,
                                                                                         options.batch),
                                quantization=scheme, weights_mb_per_token=weights_mb,
                                speedup_vs_unquantized=round_ratio(("batch " + default, "per_token"),
                                                                   ("batch " + name, "per_token"))
                                if quantized else None, per_token_s_rounds=per_round[("batch " + name, "per_token")]))
        del models
    for row in rows:  # bytes/s read -> fraction of the best bandwidth seen in the whole run
        row.roofline_fraction /= bandwidth.best
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"cpu": cpu_name(), "cpu_isa": cpu_isa.level(), "threads": torch.get_num_threads(),
                    "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "torch": torch.__version__, "python": platform.python_version()},
        "options": asdict(options),
        "read_bandwidth_gb_s": bandwidth.best / 1e9,
        "weights_mb_per_token": {r.dtype + ("" if r.quantization == "none" else " " + r.quantization):
                                 r.weights_mb_per_token for r in rows
                                 if r.weights_mb_per_token is not None},
        "rows": [asdict(r) for r in rows],
    }



def format_table(result: dict) -> str:
    opts = result["options"]
    machine = result["machine"]
    head = (f"gpt-fast bench  {result['date']}  {machine['cpu']} (kernel tier {machine.get('cpu_isa', '?')}, "
            f"{machine['threads']} threads, {machine['device']})\n"
            f"prompt {opts['prompt_length']} tokens, {opts['new_tokens']} new tokens, "
            f"best of {opts['repeats']}; read bandwidth {result['read_bandwidth_gb_s']:.1f} GB/s; "
            f"prefill column: a {opts['prefill_length']}-token prompt\n")
    columns = ("dtype", "impl", "batch", "TTFT ms", "decode tok/s", "x transformers", "x unquantized",
               "weights MB/tok", "% roofline", "prefill ms")
    lines = [columns]
    for r in result["rows"]:
        def fmt(value, spec):
            return "-" if value is None else format(value, spec)
        lines.append((r["dtype"], r["impl"], str(r["batch"]), fmt(r["ttft_ms"], ".1f"), fmt(r["decode_tok_s"], ".1f"),
                      fmt(r["speedup_vs_transformers"], ".2f"), fmt(r.get("speedup_vs_unquantized"), ".2f"),
                      fmt(r.get("weights_mb_per_token"), ".1f"),
                      fmt(None if r["roofline_fraction"] is None else 100 * r["roofline_fraction"], ".0f"),
                      fmt(r["prefill_ms"], ".1f")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    body = ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    return head + "\n".join(body[:1] + ["-" * len(body[0])] + body[1:])


def check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError("--png needs matplotlib, which is not installed: pip install matplotlib "
                           "(or pip install 'gpt_fast[plot]')") from None


def save_png(result: dict, path) -> None:
    check_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["batch"] == 1]
    labels = [f"{r['impl']}\n{r['dtype']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    ax.bar(range(len(rows)), [r["decode_tok_s"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        if r["roofline_fraction"]:
            ax.hlines(r["decode_tok_s"] / r["roofline_fraction"], i - 0.4, i + 0.4, colors="tab:red")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("batch-1 decode tokens/s (red: roofline)")
    ax.set_title(f"gpt-fast bench, {result['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_json(result: dict, path) -> None:
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
