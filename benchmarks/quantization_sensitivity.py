"""Where int4 round to nearest loses accuracy on a checkpoint: each linear kind quantized alone, the rounding of
scale/zero to bfloat16 against float32, the LM head alone in int4 and int8, the range search alone, and the
statistics behind them (outliers per group of weights, correlation of each layer's inputs).

    python benchmarks/quantization_sensitivity.py --model DIR --text valid.txt --calibration TRAIN_TEXT
        [--dtype bfloat16] [--max-windows 64] [--calibration-windows 16] [--json out.json]

Each row replaces the chosen layers' weights by their dequantized values in the model's dtype (what the quantized
layers' prefill path computes with: dequantize in float32, round to the model dtype), which also lets a row use a
format that cannot be stored (float32 scales and zeros). Figures: validation perplexity change and mean KL
divergence against the unquantized model, as in benchmarks/quantization_accuracy.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
from quantization_common import add_common_arguments, parse_common, read_calibration_windows, read_validation_windows
from torch import nn

from gpt_fast import OpenAIGPTLMHeadModel
from gpt_fast.generation.pipeline import load_tokenizer
from gpt_fast.models.linear import Conv1D
from gpt_fast.ops import reference, weight_cache
from gpt_fast.quantization.accuracy import compare_models
from gpt_fast.quantization.calibration import BlockWalk
from gpt_fast.quantization.group_range import quantize_groups, search_group_range

KINDS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "lm_head")


def kind_of(name: str) -> str:
    return "lm_head" if name == "lm_head" else ".".join(name.split(".")[-2:])


def rtn(w, bits, group):  # W (N, K) float32 -> dequantized float32, the stored format
    return reference.dequantize_linear_weight(*reference.quantize_linear_weight(w, bits, group), bits, group)


def rtn_float32_ranges(w, group):  # round to nearest with scale and zero kept in float32 (not storable)
    groups = w.view(w.shape[0], -1, group)
    zeros = groups.amin(-1)
    scales = (groups.amax(-1) - zeros) / 15
    return (quantize_groups(groups, scales, zeros) * scales[..., None] + zeros[..., None]).view_as(w)


def searched(w, group):  # the range search alone (group_range.py), unweighted
    groups = w.view(w.shape[0], -1, group)
    scales, zeros = search_group_range(groups)
    return (quantize_groups(groups, scales, zeros) * scales[..., None] + zeros[..., None]).view_as(w)


def fake_quantized(model, fn, kinds):
    """A copy of model with the weights of `kinds` replaced by fn(W (N, K) float32) in the model's dtype."""
    for module in model.modules():
        weight_cache.clear(module)
    copied = copy.deepcopy(model)
    for name, module in copied.named_modules():
        if isinstance(module, Conv1D) and kind_of(name) in kinds:
            module.weight.data = fn(module.weight.detach().float().t()).t().to(module.weight.dtype).contiguous()
    if "lm_head" in kinds:  # unties the head from the embedding
        copied.lm_head.weight = nn.Parameter(fn(copied.lm_head.weight.detach().float()).to(copied.dtype))
    return copied.eval()


def weight_statistics(model, group):
    rows = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            rows.setdefault(kind_of(name), []).append(module.weight.detach().float().t())
    rows["lm_head"] = [model.lm_head.weight.detach().float()]
    stats = {}
    for kind, weights in rows.items():
        ratio = torch.cat([(w.view(w.shape[0], -1, group).abs().amax(-1)
                            / w.view(w.shape[0], -1, group).square().mean(-1).sqrt()).flatten() for w in weights])
        kurtosis = torch.stack([((w - w.mean()) ** 4).mean() / w.var() ** 2 for w in weights]).mean()
        stats[kind] = {"max_over_rms_mean": ratio.mean().item(), "max_over_rms_p99": ratio.quantile(0.99).item(),
                       "max_over_rms_max": ratio.max().item(), "kurtosis": kurtosis.item()}
    return stats


@torch.no_grad()
def input_correlation(model, calibration):
    """{kind: mean over blocks of the mean |correlation| between two input features} of the unquantized model."""
    walk = BlockWalk(model.transformer, calibration)
    found = {}
    for _ in model.transformer.h:
        for name, H in walk.hessians().items():
            d = H.diagonal().clamp_min(1e-30).sqrt()
            corr = (H / d[:, None] / d[None]).abs()
            K = H.shape[0]
            found.setdefault(name, []).append(((corr.sum() - corr.diagonal().sum()) / (K * K - K)).item())
        walk.advance()
    return {kind: sum(v) / len(v) for kind, v in found.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, dtype="bfloat16", calibration_windows=16, calibration_required=True,
                         calibration_help="text for the input statistics (not the validation)")
    args = parse_common(parser, argv)
    model = OpenAIGPTLMHeadModel.from_pretrained(args.model, dtype=args.dtype).eval()
    tokenizer = load_tokenizer(args.model)
    window = model.config.n_positions
    batches = read_validation_windows(tokenizer, args, window)
    calibration = read_calibration_windows(tokenizer, args, window)
    rows = []

    def row(label, fn, kinds):
        result = compare_models(model, fake_quantized(model, fn, kinds), batches, args.batch)
        rows.append({"row": label, **result.as_dict()})
        print(f"{label:45}: perplexity {100 * result.perplexity_change:+.3f}%  KL {result.kl:.2e}", flush=True)

    for group in (32, 64):
        for kind in KINDS:
            row(f"int4 g{group} rtn, only {kind}", lambda w, g=group: rtn(w, 4, g), {kind})
    row("int8 rtn, only lm_head", lambda w: rtn(w, 8, None), {"lm_head"})
    row("int4 g32 rtn, all", lambda w: rtn(w, 4, 32), set(KINDS))
    row("int4 g32 rtn, all, float32 scale/zero", lambda w: rtn_float32_ranges(w, 32), set(KINDS))
    row("int4 g32 range search only, all", lambda w: searched(w, 32), set(KINDS))
    row("int4 g32 rtn blocks, lm_head int8", lambda w: rtn(w, 8, None) if w.shape[0] == model.config.vocab_size
        else rtn(w, 4, 32), set(KINDS))
    stats = weight_statistics(model, 32)
    correlation = input_correlation(model, calibration)
    for kind, values in stats.items():
        print(f"{kind:12} weights per group of 32: max/rms mean {values['max_over_rms_mean']:.2f}, p99 "
              f"{values['max_over_rms_p99']:.2f}, max {values['max_over_rms_max']:.2f}; kurtosis "
              f"{values['kurtosis']:.1f}; inputs' mean |correlation| {correlation.get(kind, float('nan')):.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"model": args.model, "text": args.text, "dtype": args.dtype, "windows": int(batches.shape[0]),
                       "rows": rows, "weights": stats, "input_correlation": correlation}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
