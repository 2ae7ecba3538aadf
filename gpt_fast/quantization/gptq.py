"""GPTQ for one weight matrix: int4 codes chosen column by column, each column's rounding error compensated on the
columns not yet quantized through the inverse of the layer's input Hessian H = E[x x^T] (Frantar et al., 2022,
"GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers"). The result is in the stored
format of ops/reference.py (q in 0..15, bfloat16 scale and zero per group of G input features), so the kernels and
checkpoints are unchanged; only which codes are stored differs from round to nearest.

Minimising || X W^T - X Wq^T ||^2 over the remaining columns after fixing column k moves them by
-err_k / [H^-1]_kk * [H^-1]_k,j; with U the upper Cholesky factor of H^-1 this is err_k / U_kk * U_k,j, done
column by column inside blocks of columns and as one matrix product for the columns after a block. A group's scale
and zero are chosen (group_range.search_group_range, weighted by diag(H)) when its first column is reached, from
the group's weights as updated so far, then fixed for the group's columns.
"""

from __future__ import annotations

import torch

from gpt_fast.quantization.group_range import quantize_groups, search_group_range

DAMPING = 0.01  # added to diag(H): this share of its mean (keeps H invertible; the usual GPTQ setting)
BLOCK = 128  # columns updated lazily per block


def inverse_hessian_factor(hessian: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """H (K, K) -> U (K, K) float64, upper triangular with U^T U = (H + damping mean(diag H) I)^-1. A feature never
    seen (H_kk = 0) gets H_kk = 1, so its column is quantized without moving the others."""
    H = hessian.to(torch.float64).clone()
    diag = H.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    diag.add_(damping * diag.mean())
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


def _prepared(weight: torch.Tensor, hessian: torch.Tensor, damping: float):
    """(W (N, K) float32 copy with never-seen features zeroed, U (K, K) float32: inverse_hessian_factor)."""
    W = weight.detach().to(torch.float32).clone()  # updated as columns are fixed
    W[:, hessian.diagonal() == 0] = 0.0  # a feature never seen: its weight does not matter
    return W, inverse_hessian_factor(hessian, damping).to(W.device, torch.float32)


def _compensated(W: torch.Tensor, U: torch.Tensor, block: int, compensate: bool, fix_column) -> None:
    """The GPTQ sweep over W (N, K) in place: fix_column(k, Wb, j) quantizes column k (= Wb[:, j], Wb the view of
    the current block of columns, which it may read ahead of j within the block) and returns its dequantized
    value (N,); its error, scaled by 1 / U_kk, moves the columns after k."""
    N, K = W.shape
    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        Wb = W[:, b0:b1]  # (N, B) view
        errors = torch.empty(N, b1 - b0, dtype=torch.float32, device=W.device)
        for j in range(b1 - b0):
            k = b0 + j
            err = (Wb[:, j] - fix_column(k, Wb, j)) / U[k, k]  # (N,)
            errors[:, j] = err
            if compensate:
                Wb[:, j + 1:] -= err[:, None] * U[k, k + 1:b1][None, :]
        if compensate and b1 < K:
            W[:, b1:] -= errors @ U[b0:b1, b1:]


def gptq_int4(weight: torch.Tensor, hessian: torch.Tensor, group_size: int, damping: float = DAMPING,
              compensate: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight W (N, K) float, hessian (K, K) -> (q (N, K) uint8 codes in 0..15, scales (N, K/G) bfloat16,
    zeros (N, K/G) bfloat16); W ~ q * scale + zero per group. compensate=False skips the error propagation
    (round to nearest with the searched ranges; for comparison)."""
    N, K = weight.shape
    G = group_size
    if K % G or hessian.shape != (K, K):
        raise ValueError(f"gptq_int4: weight (N, K) = {tuple(weight.shape)} needs K divisible by {G} and a "
                         f"({K}, {K}) Hessian, got {tuple(hessian.shape)}")
    W, U = _prepared(weight, hessian, damping)
    importance = hessian.diagonal().to(W.device, torch.float32).clamp_min(0)  # (K,) E[x_k^2]
    q = torch.empty(N, K, dtype=torch.uint8, device=W.device)
    scales = torch.empty(N, K // G, dtype=torch.float32, device=W.device)
    zeros = torch.empty_like(scales)

    def fix_column(k, Wb, j):
        if k % G == 0:  # a new group: its range from its columns as updated so far
            scales[:, k // G], zeros[:, k // G] = search_group_range(Wb[:, j:j + G], importance[k:k + G])
        s, z = scales[:, k // G], zeros[:, k // G]
        code = quantize_groups(Wb[:, j:j + 1], s, z)[:, 0]  # (N,)
        q[:, k] = code.to(torch.uint8)
        return code * s + z

    _compensated(W, U, max(G, BLOCK // G * G), compensate, fix_column)  # blocks of whole groups
    return q, scales.to(torch.bfloat16), zeros.to(torch.bfloat16)


def gptq_int8(weight: torch.Tensor, hessian: torch.Tensor, damping: float = DAMPING,
              compensate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """weight W (N, K) float, hessian (K, K) -> (q (N, K) int8 in -127..127, scales (N, 1) float32): int8's format,
    one symmetric scale per output channel (max |w| / 127, as round to nearest takes it), the codes by GPTQ."""
    N, K = weight.shape
    if hessian.shape != (K, K):
        raise ValueError(f"gptq_int8: weight (N, K) = {tuple(weight.shape)} needs a ({K}, {K}) Hessian, got "
                         f"{tuple(hessian.shape)}")
    W, U = _prepared(weight, hessian, damping)
    scales = (W.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)  # (N,)
    q = torch.empty(N, K, dtype=torch.int8, device=W.device)

    def fix_column(k, Wb, j):
        code = torch.round(Wb[:, j] / scales).clamp_(-127, 127)  # (N,)
        q[:, k] = code.to(torch.int8)
        return code * scales

    _compensated(W, U, BLOCK, compensate, fix_column)
    return q, scales[:, None].contiguous()


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """codes (N, K) uint8 in 0..15 -> qweight (N, K/2) uint8, low nibble first (ops/reference.py's layout)."""
    pairs = q.view(q.shape[0], -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous()
