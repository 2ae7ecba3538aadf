"""Perplexity evaluation (`gpt_fast.perplexity`, `gpt-fast eval`) against transformers' "Perplexity of fixed-length
models" loop on the same weights, GPT-1's shape with random weights, alternating in one run.

    python benchmarks/bench_perplexity.py [--dtype float32] [--tokens 4096] [--stride 512 256] [--repeats 2]
                                          [--threads 2] [--tiny]

Cases per stride: gpt_fast with 8 windows a pass and with 1 (the fused LM head + loss: no (B, T, V) logits), and
transformers' loop (one window a pass, logits then its loss), each giving the same perplexity first (checked:
relative 1e-4 in float32, 1e-2 in bfloat16; transformers' count is exact for disjoint windows, one token short a
window when they overlap, so its figure there is the guide's, not compared). Reported: scored tokens per second
(best and median over rounds) and the ratio to transformers'.
"""

from __future__ import annotations

import argparse
import math

import torch
from timing import best_and_median, format_table, machine_description, time_alternating

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel, perplexity
from gpt_fast.ops import cpu_isa

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def transformers_loop(model, tokens: torch.Tensor, seq_len: int, stride: int) -> tuple[float, int]:
    """The guide's loop: (perplexity, tokens it counted)."""
    nll_sum, counted, previous_end = 0.0, 0, 0
    ids = tokens[None]
    for begin in range(0, ids.size(1), stride):
        end = min(begin + seq_len, ids.size(1))
        target_len = end - previous_end
        inputs = ids[:, begin:end]
        targets = inputs.clone()
        targets[:, :-target_len] = -100
        with torch.no_grad():
            loss = model(inputs, labels=targets).loss
        loss_tokens = int((targets != -100).sum()) - targets.size(0)
        nll_sum += float(loss) * loss_tokens
        counted += loss_tokens
        previous_end = end
        if end == ids.size(1):
            break
    return math.exp(nll_sum / counted), counted


def run(dtype: torch.dtype, length: int, strides: list[int], repeats: int, tiny: bool) -> str:
    import transformers

    torch.manual_seed(0)
    shape = dict(n_layer=2, n_embd=64, n_head=2, n_positions=64) if tiny else {}
    ours = OpenAIGPTLMHeadModel(OpenAIGPTConfig(**shape)).to(dtype).eval()
    theirs = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**ours.config.to_dict()))
    theirs.load_state_dict(ours.state_dict(), strict=False)
    theirs = theirs.to(dtype).eval()
    seq_len = ours.config.n_positions
    tokens = torch.randint(0, ours.config.vocab_size, (length,), generator=torch.Generator().manual_seed(0))
    rows = []
    tolerance = 1e-4 if dtype == torch.float32 else 1e-2
    for stride in strides:
        stride = min(stride, seq_len)
        scored = perplexity(ours, tokens, seq_len, stride).tokens
        candidates = {
            "gpt_fast, 8 windows a pass": lambda stride=stride: perplexity(ours, tokens, seq_len, stride, 8),
            "gpt_fast, 1 window a pass": lambda stride=stride: perplexity(ours, tokens, seq_len, stride, 1),
            "transformers (the guide's loop)": lambda stride=stride: transformers_loop(theirs, tokens, seq_len, stride),
        }
        ppl = perplexity(ours, tokens, seq_len, stride).perplexity
        theirs_ppl, counted = transformers_loop(theirs, tokens, seq_len, stride)
        if counted == scored and not math.isclose(ppl, theirs_ppl, rel_tol=tolerance):
            raise AssertionError(f"stride {stride}: perplexity {ppl} against transformers' {theirs_ppl}")
        stats = best_and_median(time_alternating(candidates, repeats=repeats, warmup=1))
        base = stats["transformers (the guide's loop)"]["best"]
        for name, stat in stats.items():
            rows.append([stride, name, scored / stat["best"], scored / stat["median"], base / stat["best"]])
        rows.append([stride, "perplexity (gpt_fast / transformers)", f"{ppl:.6g} / {theirs_ppl:.6g}", "", ""])
    shape_name = "tiny" if tiny else "GPT-1"
    return (f"{shape_name} shape, random weights, {str(dtype).removeprefix('torch.')}, {length} tokens in windows of "
            f"{seq_len}, best of {repeats} alternating rounds; {machine_description()}, kernel tier "
            f"{cpu_isa.level()}\n\n" + format_table(["stride", "case", "scored tok/s best", "tok/s median",
                                                     "x transformers"], rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--stride", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="2 layers x 64 wide, 64 positions (tests)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(run(DTYPES[args.dtype], args.tokens, args.stride, args.repeats, args.tiny))


if __name__ == "__main__":
    main()
