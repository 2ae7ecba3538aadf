"""The ops layer: thin wrappers over the torch.ops.gpt_fast kernels (one module per op, each with its fake kernel),
their eager references (reference.py: fallback, test oracle and benchmark baseline), the weights packed once for a
kernel (weight_cache.py) and the one place that decides which of them a model call uses (kernel_plan.py).

`has_kernel(op, device_type)` says whether a compiled kernel exists for a device type.
"""

from gpt_fast.ops._library import extension_loaded, has_kernel, load_error
from gpt_fast.ops.add_layernorm import add_layernorm, add_layernorm_backward
from gpt_fast.ops.bias_gelu import bias_gelu, bias_gelu_backward
from gpt_fast.ops.decode_attention import decode_attention
from gpt_fast.ops.dequantize_linear_weight import dequantize_linear_weight
from gpt_fast.ops.flash_attention import flash_attention
from gpt_fast.ops.flash_attention_train import flash_attention_backward, flash_attention_train
from gpt_fast.ops.linear_quantized import linear_quantized, pack_quantized_weight
from gpt_fast.ops.linear_small_m import linear_small_m
from gpt_fast.ops.pack_linear_weight import pack_linear_weight
from gpt_fast.ops.round_activations import round_activations

OPS = ("add_layernorm", "bias_gelu", "decode_attention", "flash_attention", "linear_small_m", "pack_linear_weight",
       "bias_gelu_backward", "add_layernorm_backward", "linear_quantized", "pack_quantized_weight",
       "flash_attention_train", "flash_attention_backward", "dequantize_linear_weight", "round_activations")

__all__ = ["OPS", "add_layernorm", "add_layernorm_backward", "bias_gelu", "bias_gelu_backward", "decode_attention",
           "dequantize_linear_weight", "extension_loaded", "flash_attention", "flash_attention_backward",
           "flash_attention_train", "has_kernel", "linear_quantized", "linear_small_m", "load_error",
           "pack_linear_weight", "pack_quantized_weight", "round_activations"]
