"""Quantizing a model with GPTQ (gptq.py) from calibration text: the input Hessian H = E[x x^T] of every layer is
measured on calibration tokens, block by block, each block fed the output of the blocks before it already
quantized (so a layer's codes compensate the error that reaches it, not only its own).

The calibration token windows run once through the embeddings (the inputs of block 0, captured by a pre-hook that
stops the forward there); then for each block in order: one pass with hooks on its four Conv1Ds accumulates their
H, the four are quantized and replaced, and a second pass through the quantized block gives the next block's
inputs. The LM head's H comes from the last block's output (GPT-1 is post-LayerNorm: that output is the head's
input). Cost: two passes of each block and one of the embeddings over the calibration tokens, plus per layer a
Cholesky of H (K x K) and K column updates of its (N, K) weight.

Calibration text must not be the text the model is evaluated on (e.g. the training split).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from gpt_fast.models.linear import Conv1D
from gpt_fast.ops import weight_cache
from gpt_fast.quantization.config import QuantizationConfig
from gpt_fast.quantization.gptq import gptq_int4, gptq_int8, pack_int4
from gpt_fast.quantization.layer import QuantizedConv1D, QuantizedLMHead

BATCH = 8  # calibration windows per forward
DEFAULT_WINDOWS = 128  # gpt-fast convert --calibration-windows


class _Stop(Exception):
    """Raised by the block-0 pre-hook once it has the block's inputs."""


def calibration_windows(calibration, vocab_size: int, n_positions: int) -> torch.Tensor:
    """The checked calibration tokens as windows (count, T): a LongTensor (count, T) with T <= n_positions, or a
    1-D one cut into windows of n_positions tokens (a shorter sequence is one window; a tail shorter than a window
    is dropped)."""
    where = "quantize: calibration"
    if not isinstance(calibration, torch.Tensor):
        raise TypeError(f"{where} must be a LongTensor of token ids, (count, T) or 1-D, got "
                        f"{type(calibration).__name__} (tokenize calibration text first)")
    if calibration.dtype not in (torch.int64, torch.int32) or calibration.dim() not in (1, 2):
        raise ValueError(f"{where} must be an integer tensor of token ids, (count, T) or 1-D, got "
                         f"{calibration.dtype} of shape {tuple(calibration.shape)}")
    if calibration.numel() == 0:
        raise ValueError(f"{where} is empty: GPTQ needs calibration tokens")
    low, high = int(calibration.min()), int(calibration.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{where} holds token ids outside [0, {vocab_size}) (min {low}, max {high})")
    ids = calibration.long()
    if ids.dim() == 1:
        T = min(n_positions, ids.numel())
        return ids[:ids.numel() // T * T].view(-1, T)
    if ids.shape[1] > n_positions:
        raise ValueError(f"{where} windows of {ids.shape[1]} tokens exceed the model's n_positions "
                         f"({n_positions})")
    return ids


def read_calibration_text(path) -> str:
    """The text of a UTF-8 file, or of a folder's *.txt files in name order; an error if there is none."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"calibration folder {path} has no *.txt files")
        text = "".join(file.read_text(encoding="utf-8") for file in files)
    elif path.is_file():
        text = path.read_text(encoding="utf-8")
    else:
        raise FileNotFoundError(f"no such calibration file or folder: {path}")
    if not text.strip():
        raise ValueError(f"calibration text {path} is empty")
    return text


def spread_windows(ids, length: int, max_windows: int) -> torch.Tensor:
    """Token ids (a list or 1-D tensor) cut into windows (count, T) of `length` tokens (one shorter window if the
    text is shorter), at most max_windows of them spread evenly over the text."""
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids.numel() < 2:
        raise ValueError(f"calibration text is {ids.numel()} token(s) long; GPTQ needs more")
    T = min(length, ids.numel())
    windows = ids[:ids.numel() // T * T].view(-1, T)  # (count, T)
    if windows.shape[0] > max_windows:
        windows = windows[torch.linspace(0, windows.shape[0] - 1, max_windows).round().long()]
    return windows


def _block_inputs(base: nn.Module, windows: torch.Tensor) -> tuple[list, object, object]:
    """[(B, T, C) hidden state entering block 0 per batch], the plan and the attend function of those calls."""
    captured: list = []
    state: dict = {}

    def grab(module, args):
        hidden, plan, block_attend = args[:3]  # (and the last block's positions, which h[0] never gets)
        captured.append(hidden)
        state["plan"], state["attend"] = plan, block_attend.func  # block_attend = partial(attend, 0)
        raise _Stop

    handle = base.h[0].register_forward_pre_hook(grab)
    try:
        for chunk in windows.split(BATCH):
            try:
                base(chunk)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured, state["plan"], state["attend"]


def _hessians(block: nn.Module, run) -> dict[str, torch.Tensor]:
    """{Conv1D name in the block: E[x x^T] (K, K) float32} over the inputs run() feeds the block."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []

    def hook(name):
        def accumulate(module, args, output):
            x = args[0].reshape(-1, args[0].shape[-1]).to(torch.float32)  # (rows, K)
            sums[name] = sums.get(name, 0) + x.t() @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return accumulate

    for name, module in block.named_modules():
        if isinstance(module, Conv1D):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return {name: sums[name] / counts[name] for name in sums}


class BlockWalk:
    """Calibration windows walked through a base model's blocks in order, as GPTQ measures them. `hidden` holds the
    hidden states [(B, T, C) per batch] entering the current block (`index`); `hessians()` gives E[x x^T] of the
    block's Conv1D inputs over them, and `advance()` runs them through the block as it is then (quantized or not)
    into the next. After the last block, `hidden` is the LM head's input (GPT-1 is post-LayerNorm)."""

    def __init__(self, base: nn.Module, windows: torch.Tensor):
        self.base = base
        self.index = 0
        self.hidden, self._plan, self._attend = _block_inputs(base, windows)

    def _run(self) -> list:
        block, attend = self.base.h[self.index], functools.partial(self._attend, self.index)
        return [block(x, self._plan, attend)[0] for x in self.hidden]

    def hessians(self) -> dict[str, torch.Tensor]:
        """{Conv1D name in the current block: E[x x^T] (K, K) float32} over the current hidden states."""
        return _hessians(self.base.h[self.index], self._run)

    def advance(self) -> None:
        self.hidden = self._run()
        self.index += 1


def _codes(weight: torch.Tensor, hessian: torch.Tensor, config: QuantizationConfig, compensate: bool) -> tuple:
    """W (N, K) -> (qweight, scales, zeros) in the stored format of config's scheme, chosen by GPTQ."""
    if config.bits == 8:
        return (*gptq_int8(weight, hessian, compensate=compensate), None)
    q, scales, zeros = gptq_int4(weight, hessian, config.group_size, compensate=compensate)
    return pack_int4(q), scales, zeros


def _quantized_conv(conv: Conv1D, hessian: torch.Tensor, config: QuantizationConfig,
                    compensate: bool) -> QuantizedConv1D:
    K, N = conv.weight.shape
    with torch.device("meta"):
        layer = QuantizedConv1D(N, K, config, conv.weight.dtype)
    layer.qweight, layer.scales, layer.zeros = _codes(conv.weight.t(), hessian, config, compensate)
    layer.bias = conv.bias
    layer.train(conv.training)
    return layer


def _quantized_head(head: nn.Linear, hessian: torch.Tensor, config: QuantizationConfig,
                    compensate: bool) -> QuantizedLMHead:
    V, C = head.weight.shape
    with torch.device("meta"):
        layer = QuantizedLMHead(V, C, config, head.weight.dtype)
    layer.qweight, layer.scales, layer.zeros = _codes(head.weight, hessian, config, compensate)
    layer.train(head.training)
    return layer


@torch.no_grad()
def gptq_quantize_model(model: nn.Module, config: QuantizationConfig, targets: dict[str, int],
                        calibration: torch.Tensor, compensate: bool = True) -> None:
    """Replaces every target layer ({name: K}, apply._targets) of `model` by its GPTQ-quantized copy, in place.
    calibration: checked windows (count, T) of token ids."""
    base = getattr(model, "base_model", model)
    device = next(base.parameters()).device
    windows = calibration.to(device)
    was_training = model.training
    model.eval()
    try:
        walk = BlockWalk(base, windows)
        prefix = "" if base is model else f"{model.base_model_prefix}."
        for i, block in enumerate(base.h):
            for name, hessian in walk.hessians().items():
                full = f"{prefix}h.{i}.{name}"
                if full not in targets:
                    continue
                old = block.get_submodule(name)
                new = _quantized_conv(old, hessian, config, compensate)
                weight_cache.clear(old)
                parent, _, child = name.rpartition(".")
                setattr(block.get_submodule(parent) if parent else block, child, new)
            walk.advance()  # the next block's inputs, through this block quantized
        hidden = walk.hidden
        if "lm_head" in targets:
            hessian = sum(x.reshape(-1, x.shape[-1]).to(torch.float32).t() @ x.reshape(-1, x.shape[-1])
                          .to(torch.float32) for x in hidden) / sum(x.numel() // x.shape[-1] for x in hidden)  # (C, C)
            head = model.lm_head
            new = _quantized_head(head, hessian, config, compensate)
            weight_cache.clear(head)
            model.lm_head = new
    finally:
        model.train(was_training)
