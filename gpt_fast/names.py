"""The names a user passes as strings, checked in one place: attn_implementation, dtype, device and model_type.

Every entry point (the models' constructors and from_pretrained, the pipeline, the CLI, the Auto classes, the
config loader) goes through these functions, so each name is accepted, spelled and refused the same way
everywhere. Only torch is imported: every layer of the package may use this module.
"""

from __future__ import annotations

import torch

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "fused")
MODEL_TYPE = "openai-gpt"
DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
          "float64": torch.float64, "double": torch.float64, "fp64": torch.float64}


def check_attn_implementation(name: str | None) -> str | None:
    """None / "auto" (the fastest available backend) or one of ATTN_IMPLEMENTATIONS; anything else is refused."""
    if name not in (None, "auto") + ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS} or None/'auto', got {name!r}")
    return name


def parse_dtype(dtype) -> torch.dtype | str | None:
    """A floating torch.dtype, one of DTYPES' names (with or without "torch."), "auto" or None."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point) or dtype == "auto":
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype must be a torch floating dtype, one of {sorted(DTYPES)} or 'auto', got {dtype!r}")


def parse_device(device) -> torch.device:
    """None (the CPU), a torch.device, a string like "cuda:0", or a CUDA index (negative: the CPU)."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, int):
        return torch.device("cuda", device) if device >= 0 else torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch.device, a string like 'cpu' or 'cuda:0', or an index: "
                         f"{error}") from None


def check_model_type(model_type, where: str = "config") -> None:
    """gpt_fast runs only transformers' "openai-gpt" architecture."""
    if model_type != MODEL_TYPE:
        raise ValueError(f"{where} holds a {model_type!r} model; gpt_fast supports only {MODEL_TYPE!r}")
