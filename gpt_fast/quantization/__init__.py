"""Weight-only int8 / int4 quantization of a GPT-1 model for inference (issue 15): the config entry (config.py),
the quantized layers (layer.py) and the in-place conversion (apply.py), with int4 codes by round to nearest or by
GPTQ from calibration tokens (gptq.py, group_range.py, calibration.py). Use model.quantize(...) or
from_pretrained(..., quantization=...); see docs/quantization.md."""

from gpt_fast.quantization.apply import quantization_of, quantize_model
from gpt_fast.quantization.config import SCHEMES, QuantizationConfig
from gpt_fast.quantization.layer import QuantizedConv1D, QuantizedLinear, QuantizedLMHead

__all__ = ["SCHEMES", "QuantizationConfig", "QuantizedConv1D", "QuantizedLMHead", "QuantizedLinear",
           "quantization_of", "quantize_model"]
