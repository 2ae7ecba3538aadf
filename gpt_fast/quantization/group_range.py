"""The scale and zero of int4 groups chosen to minimise the (optionally weighted) squared error of the dequantized
weight, with the stored format's bfloat16 rounding of scale and zero applied inside the search.

Round to nearest (ops/reference.py) takes zero = bf16(min), scale = bf16((max - zero) / 15): the whole range is
kept, so one outlier in a group of 32 coarsens the step of the other 31. Here a group's range [min, max] is shrunk
by each factor of a grid (both ends, toward 0), scale and zero rounded to bfloat16 as they will be stored, the
group quantized with them, and the pair with the least error kept; then a few rounds of weighted least squares
refit (scale, zero) to the chosen codes q (w ~ q scale + zero), again rounded to bfloat16 and kept only where the
error falls. The rounding is inside the loop because a pair that is optimal in fp32 can lose after rounding to
bfloat16 (8 significant bits). Per-input-feature weights (GPTQ's diagonal of the input Hessian, E[x_k^2]) make the
error the layer's output error for uncorrelated inputs rather than the weight's.
"""

from __future__ import annotations

import torch

SHRINK_STEPS = 16  # range factors 1.0 down to SHRINK_MIN
SHRINK_MIN = 0.7
REFITS = 2
MAX_Q = 15


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


def quantize_groups(groups: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """groups (..., g) float32, scales and zeros (...) -> codes q (..., g) float32 in [0, 15], round to nearest
    (a zero scale, a constant group, takes q = 0: its value is the zero)."""
    safe = torch.where(scales == 0, torch.ones_like(scales), scales)
    return torch.round((groups - zeros[..., None]) / safe[..., None]).clamp_(0, MAX_Q)


def _error(groups, scales, zeros, weights):
    q = quantize_groups(groups, scales, zeros)
    err = (q * scales[..., None] + zeros[..., None] - groups).square_()
    if weights is not None:
        err.mul_(weights)
    return err.sum(-1), q


def search_group_range(groups: torch.Tensor, weights: torch.Tensor | None = None, steps: int = SHRINK_STEPS,
                       refits: int = REFITS) -> tuple[torch.Tensor, torch.Tensor]:
    """groups (..., g) float32; weights broadcastable to groups (non-negative) or None -> (scales, zeros) (...),
    float32 holding bfloat16 values, scales >= 0. The full range (round to nearest's choice) is the grid's
    first candidate, so the result's error is never above round to nearest's."""
    groups = groups.to(torch.float32)
    low, high = groups.amin(-1), groups.amax(-1)  # (...)
    best = best_scales = best_zeros = None
    for factor in torch.linspace(1.0, SHRINK_MIN, steps).tolist():
        zeros = _bf16(low * factor)
        scales = _bf16((high * factor - zeros) / MAX_Q).clamp_min_(0)
        err, _ = _error(groups, scales, zeros, weights)
        if best is None:
            best, best_scales, best_zeros = err, scales, zeros
            continue
        better = err < best
        best = torch.where(better, err, best)
        best_scales = torch.where(better, scales, best_scales)
        best_zeros = torch.where(better, zeros, best_zeros)
    w = torch.ones_like(groups) if weights is None else weights.expand_as(groups)
    for _ in range(refits):  # weighted least squares of groups ~ q * scale + zero for the current codes
        q = quantize_groups(groups, best_scales, best_zeros)
        s0, sq, sqq = w.sum(-1), (w * q).sum(-1), (w * q * q).sum(-1)
        sw, sqw = (w * groups).sum(-1), (w * q * groups).sum(-1)
        det = s0 * sqq - sq * sq
        solvable = (det > 0) & (s0 > 0)
        det_safe, s0_safe = torch.where(solvable, det, 1.0), torch.where(solvable, s0, 1.0)
        scales = _bf16(torch.where(solvable, (s0 * sqw - sq * sw) / det_safe, best_scales))
        zeros = _bf16(torch.where(solvable, (sw - scales * sq) / s0_safe, best_zeros))
        err, _ = _error(groups, scales, zeros, weights)
        better = (err < best) & (scales >= 0)
        best = torch.where(better, err, best)
        best_scales = torch.where(better, scales, best_scales)
        best_zeros = torch.where(better, zeros, best_zeros)
    return best_scales, best_zeros
