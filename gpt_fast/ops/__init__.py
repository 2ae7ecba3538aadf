"""Thin Python wrappers over the torch.ops.gpt_fast kernels, each with its fake (meta) kernel.

One module per op. `has_kernel(op, device_type)` says whether a compiled kernel exists; the layers use it to pick
their backend once, and fall back to gpt_fast.reference where it says no.
"""

from gpt_fast.ops._library import extension_loaded, has_kernel, load_error
from gpt_fast.ops.add_layernorm import add_layernorm
from gpt_fast.ops.bias_gelu import bias_gelu
from gpt_fast.ops.decode_attention import decode_attention
from gpt_fast.ops.flash_attention import flash_attention
from gpt_fast.ops.linear import linear_small_m, pack_linear_weight

__all__ = ["add_layernorm", "bias_gelu", "decode_attention", "extension_loaded", "flash_attention", "has_kernel",
           "linear_small_m", "load_error", "pack_linear_weight"]
