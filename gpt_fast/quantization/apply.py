"""Turning a model into its weight-only quantized form, in place: every Conv1D of every block (attn.c_attn,
attn.c_proj, mlp.c_fc, mlp.c_proj) becomes a QuantizedConv1D and, with lm_head, the LM head a QuantizedLMHead.

The token and position embeddings, the LayerNorms, the biases and the other heads (sequence summary, classifier)
stay in the model's dtype. The LM head is tied to the token embedding in the unquantized model; once quantized
the two are separate: the embedding keeps its table in the model's dtype (state_dict key
`transformer.tokens_embed.weight`) and the head holds a quantized copy (`lm_head.qweight`, `lm_head.scales`,
`lm_head.zeros`). With lm_head=False the head stays tied to the embedding.

method="rtn" quantizes each weight on its own (ops/reference.py's round to nearest); method="gptq" (int4 only)
chooses the codes from calibration tokens (calibration.py), block by block. Both write the same format and the same
config.json entry.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from gpt_fast.models.linear import Conv1D, plain_linear, weight_only_head
from gpt_fast.ops import weight_cache
from gpt_fast.quantization.calibration import calibration_windows, gptq_quantize_model
from gpt_fast.quantization.config import (
    CONFIG_KEY,
    DEFAULT_GROUP_SIZE,
    METHODS,
    QuantizationConfig,
    check_group_size,
    make_config,
)
from gpt_fast.quantization.layer import QuantizedConv1D, QuantizedLinear, QuantizedLMHead


def quantization_of(model: nn.Module) -> QuantizationConfig | None:
    """How `model` is quantized (read from its layers), or None if it is not."""
    for module in model.modules():
        if isinstance(module, QuantizedConv1D):
            head = getattr(model, "lm_head", None)
            return QuantizationConfig(module.bits, module.group_size, isinstance(head, QuantizedLMHead),
                                      module.activation_bits)
    return None


def _targets(model: nn.Module, config: QuantizationConfig) -> dict[str, int]:
    """{layer name: in_features} of the layers to quantize."""
    targets = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, Conv1D):
            continue
        if not plain_linear(layer, Conv1D):  # its QuantizedConv1D would drop the hooks or the subclass's forward
            what = "has forward hooks" if type(layer) is Conv1D else f"is a {type(layer).__name__}, not a Conv1D"
            raise ValueError(f"cannot quantize {name}: it {what}, which its quantized replacement would drop; "
                             "quantize the plain model first")
        targets[name] = layer.weight.shape[0]
    head = getattr(model, "lm_head", None)
    # The quantized head has no bias, hooks or subclass forward: any other head (a LoRA wrapper included) stays as it
    # is, in the model dtype.
    if config.lm_head and weight_only_head(head):
        targets["lm_head"] = head.in_features
    return targets


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)


def quantize_model(model: nn.Module, scheme: str, group_size: int | None = DEFAULT_GROUP_SIZE,
                   lm_head: bool = True, method: str = "rtn", calibration=None) -> nn.Module:
    """Quantizes `model` (an OpenAIGPT* model) in place and returns it, in eval mode (a quantized model is
    inference only). scheme: "int8" (per output channel), "int4" (groups of group_size input features), "int4-a8" or
    "int8-a8" (int4 / int8 weights, each call's activations rounded to int8 per group of group_size: the CPU kernel
    multiplies bytes).
    method: how the int4 codes are chosen, "rtn" (round to nearest, the default) or "gptq" (GPTQ error compensation
    from calibration, a LongTensor of token ids (count, T) or 1-D; see calibration.py); the stored format is the
    same."""
    config = make_config(scheme, group_size, lm_head)
    check_method(method, config, calibration)
    if method == "rtn":
        apply_quantization(model, config, structure_only=False)
    else:
        windows = calibration_windows(calibration, model.config.vocab_size, model.config.n_positions)
        config, targets = _checked_targets(model, config)
        gptq_quantize_model(model, config, targets, windows)
        record_in_config(model.config, config)
    return model.eval()


def check_method(method, config: QuantizationConfig, calibration) -> None:
    """method must be one of METHODS; "gptq" needs calibration, "rtn" takes none."""
    if method not in METHODS:
        raise ValueError(f"quantize: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "gptq" and calibration is None:
        raise ValueError("quantize: method 'gptq' needs calibration token ids (calibration=...), from text the "
                         "model will not be evaluated on")
    if method == "rtn" and calibration is not None:
        raise ValueError("quantize: calibration is used by method='gptq' only; round to nearest ('rtn') takes none")


def _checked_targets(model: nn.Module, config: QuantizationConfig) -> tuple[QuantizationConfig, dict[str, int]]:
    """(the config as it will be applied, {layer name: in_features} of the layers to quantize), or a ValueError."""
    current = quantization_of(model)
    if current is not None:
        raise ValueError(f"the model is already quantized ({current.scheme}"
                         f"{'' if current.group_size is None else f', group_size={current.group_size}'}); load or "
                         "build the unquantized model to quantize it another way")
    targets = _targets(model, config)
    if not any(name != "lm_head" for name in targets):
        raise ValueError(f"{type(model).__name__} has no Conv1D layers to quantize")
    check_group_size(config, targets)
    return replace(config, lm_head="lm_head" in targets), targets  # a model without an LM head has none


def apply_quantization(model: nn.Module, config: QuantizationConfig, structure_only: bool) -> None:
    """Replaces the layers. structure_only: empty quantized layers in the Conv1Ds' dtype and device (loading a
    quantized checkpoint builds the model on the meta device, then fills the buffers from the file)."""
    config, targets = _checked_targets(model, config)
    for name in targets:
        old = model.get_submodule(name)
        if name == "lm_head":
            if structure_only:
                new = QuantizedLMHead(old.out_features, old.in_features, config, old.weight.dtype, old.weight.device)
            else:
                new = QuantizedLMHead.from_weight(old.weight, config)
        elif structure_only:
            K, N = old.weight.shape
            new = QuantizedConv1D(N, K, config, old.weight.dtype, old.weight.device)
            new.bias = old.bias
        else:
            new = QuantizedConv1D.from_conv1d(old, config)
        new.train(old.training)
        weight_cache.clear(old)  # a packed copy of the float weight goes with it
        _replace(model, name, new)
    record_in_config(model.config, config)


def dequantize_model(model: nn.Module) -> nn.Module:
    """Undoes quantize_model in place (transformers' model.dequantize()): each quantized block layer becomes a Conv1D
    holding its dequantized weight (codes times scales, in the layer's dtype: the rounding error stays) and its
    bias; a quantized LM head is tied to the token embedding again when the config ties them (the embedding was
    never quantized, so the head's float weights come back exactly), else becomes a bias-free nn.Linear of its
    dequantized weight. The config loses its quantization entry. A model that is not quantized is a ValueError."""
    if quantization_of(model) is None:
        raise ValueError(f"dequantize: {type(model).__name__} is not quantized")
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, QuantizedLinear):
            continue
        with torch.device("meta"):  # no storage: the weights are set below (as QuantizedConv1D.from_conv1d does)
            if isinstance(layer, QuantizedConv1D):
                new = Conv1D(layer.out_features, layer.in_features)
                new.bias = layer.bias
            else:
                new = nn.Linear(layer.in_features, layer.out_features, bias=False)
        weight = layer.dequantized(layer.dtype).detach()  # (out, in)
        new.weight = nn.Parameter(weight.t().contiguous() if isinstance(new, Conv1D) else weight.clone())
        new.train(layer.training)
        weight_cache.clear(layer)
        _replace(model, name, new)
    model.tie_weights()  # a tied head shares the embedding's table again
    record_in_config(model.config, None)
    return model


def record_in_config(model_config, config: QuantizationConfig | None) -> None:
    """Sets (or, with None, removes) the config's quantization_config entry, written to config.json."""
    extra = [k for k in model_config._extra_keys if k != CONFIG_KEY]
    if config is None:
        model_config.__dict__.pop(CONFIG_KEY, None)
    else:
        setattr(model_config, CONFIG_KEY, config.to_dict())
        extra.append(CONFIG_KEY)
    model_config._extra_keys = sorted(extra)


def quantized_buffer_names(model: nn.Module) -> set[str]:
    """The state_dict keys of every quantized buffer (qweight, scales, zeros) in the model."""
    return {f"{prefix}.{name}" for prefix, module in model.named_modules() if isinstance(module, QuantizedLinear)
            for name, buffer in module.named_buffers(recurse=False) if buffer is not None}
