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


MODEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)  # the dtypes a model can run in


def parse_dtype(dtype, name: str = "dtype") -> torch.dtype | str | None:
    """One of MODEL_DTYPES (a torch.dtype, or one of DTYPES' names with or without "torch."), "auto" or None.
    name: what the value is called in the error (an argument, or a config file's field)."""
    if dtype is None or dtype == "auto" or (isinstance(dtype, torch.dtype) and dtype in MODEL_DTYPES):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"{name} must be one of torch.float32, torch.bfloat16, torch.float16, torch.float64 (or a name "
                     f"of one: {', '.join(sorted(DTYPES))}) or 'auto', got {dtype!r}")


def dtype_argument(dtype, torch_dtype):
    """The one dtype argument of a call that takes transformers' two names for it (`dtype`, `torch_dtype`): either,
    or both when equal; unparsed (parse_dtype reads it)."""
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"pass dtype or torch_dtype, not both with different values ({dtype} vs {torch_dtype})")
    return dtype if dtype is not None else torch_dtype


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
