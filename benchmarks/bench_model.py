"""Whole-model prefill: a GPT-1-shaped OpenAIGPTModel forward (random weights) for each gpt_fast backend and
for transformers, in the same run, alternating.

    python benchmarks/bench_model.py [--batch 1] [--seq 512] [--dtypes float32 bfloat16] [--repeats 5]
    pytest benchmarks/bench_model.py     # pytest-benchmark, one row per backend and dtype
"""

from __future__ import annotations

import argparse

import pytest
import torch
from timing import best_and_median, format_table, machine_description, time_alternating

import gpt_fast
from gpt_fast.cli.benchmark import gpt_fast_backends

GPT1 = dict(n_layer=12, n_embd=768, n_head=12, n_positions=512, vocab_size=40478)


def build_models(dtype: torch.dtype, with_transformers: bool = True) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    model = gpt_fast.OpenAIGPTModel(gpt_fast.OpenAIGPTConfig(**GPT1)).to(dtype).eval()
    models = {}
    for backend in gpt_fast_backends("cpu"):
        clone = gpt_fast.OpenAIGPTModel(model.config, attn_implementation=backend).to(dtype).eval()
        clone.load_state_dict(model.state_dict())
        models[f"gpt_fast {backend}"] = clone
    if with_transformers:
        try:
            import transformers
        except ImportError:
            return models
        hf = transformers.OpenAIGPTModel(transformers.OpenAIGPTConfig(**GPT1)).to(dtype).eval()
        hf.load_state_dict(model.state_dict(), strict=False)
        models["transformers"] = hf
    return models


def run(batch: int, seq: int, dtypes: list[str], repeats: int) -> str:
    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        models = build_models(dtype)
        ids = torch.randint(0, GPT1["vocab_size"], (batch, seq))
        with torch.inference_mode():
            calls = {name: (lambda m=m, ids=ids: m(ids)) for name, m in models.items()}
            times = best_and_median(time_alternating(calls, repeats=repeats))
        sdpa, hf = times["gpt_fast sdpa"]["median"], times.get("transformers", {}).get("median")
        for name, t in times.items():
            rows.append([dtype_name, name, t["median"] * 1e3, t["best"] * 1e3, sdpa / t["median"],
                         hf / t["median"] if hf else "n/a"])
    header = ["dtype", "path", "median ms", "best ms", "speed vs sdpa", "speed vs transformers"]
    return f"Model forward, GPT-1 shape, B={batch}, T={seq}; {machine_description()}\n\n" + format_table(header, rows)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("path", ["eager", "sdpa", "fused", "transformers"])
def test_model_forward(benchmark, dtype, path):
    name = path if path == "transformers" else f"gpt_fast {path}"
    models = build_models(getattr(torch, dtype), with_transformers=path == "transformers")
    if name not in models:
        pytest.skip(f"{name} unavailable")
    ids = torch.randint(0, GPT1["vocab_size"], (1, 512))
    with torch.inference_mode():
        benchmark(models[name], ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(run(args.batch, args.seq, args.dtypes, args.repeats))


if __name__ == "__main__":
    main()
