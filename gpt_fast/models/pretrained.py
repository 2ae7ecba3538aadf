"""What every gpt_fast model shares: config, attention backend choice, weight initialisation, and the
from_pretrained / save_pretrained / from_transformers entry points (the file work itself is in checkpoint.py)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from gpt_fast.checkpoints import checkpoint
from gpt_fast.models.configuration import OpenAIGPTConfig
from gpt_fast.models.initialization import initialize_parameter
from gpt_fast.names import check_attn_implementation


class OpenAIGPTPreTrainedModel(nn.Module):
    config_class = OpenAIGPTConfig
    base_model_prefix = "transformer"  # where the base model's keys sit in a head model's state dict

    def __init__(self, config: OpenAIGPTConfig, attn_implementation: str | None = None):
        super().__init__()
        if not isinstance(config, OpenAIGPTConfig):
            raise TypeError(f"config must be an OpenAIGPTConfig, got {type(config).__name__}")
        check_attn_implementation(attn_implementation)
        config.validate()
        self.config = config
        self._attn_implementation = attn_implementation

    # -- attention backend ---------------------------------------------------------------------------------
    @property
    def attn_implementation(self) -> str | None:
        return self._attn_implementation

    def set_attn_implementation(self, attn_implementation: str | None) -> None:
        """Switches every sub-model to another backend (None or "auto" = fastest available)."""
        check_attn_implementation(attn_implementation)
        for module in self.modules():
            if isinstance(module, OpenAIGPTPreTrainedModel):
                module._attn_implementation = attn_implementation

    # -- weights -------------------------------------------------------------------------------------------
    def init_weights(self, skip: nn.Module | None = None) -> None:
        """Initialises every weight as transformers does (normal with initializer_range) and ties the LM head.
        skip: a submodule already initialised (a head's base model, which initialises itself when built)."""
        std = self.config.initializer_range
        done = set() if skip is None else {id(p) for p in skip.parameters()}
        for name, param in self.named_parameters():
            if id(param) not in done:
                initialize_parameter(name, param, std)
        self.tie_weights()

    def tie_weights(self) -> None:
        lm_head = getattr(self, "lm_head", None)
        if lm_head is not None and self.config.tie_word_embeddings:
            lm_head.weight = self.transformer.tokens_embed.weight

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    # -- checkpoints ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                        torch_dtype: torch.dtype | str | None = None, device: torch.device | str | int | None = None,
                        attn_implementation: str | None = None, config: OpenAIGPTConfig | None = None,
                        output_loading_info: bool = False, **config_overrides):
        """Loads a folder (or a hub name, with huggingface_hub installed) straight into dtype and device."""
        if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
            raise ValueError(f"pass dtype or torch_dtype, not both with different values ({dtype} vs {torch_dtype})")
        return checkpoint.load_pretrained(cls, name_or_path, dtype=dtype if dtype is not None else torch_dtype,
                                          device=device, attn_implementation=attn_implementation, config=config,
                                          output_loading_info=output_loading_info, config_overrides=config_overrides)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Writes config.json and model.safetensors, loadable by gpt_fast and by transformers."""
        return checkpoint.save_pretrained(self, save_directory)

    @classmethod
    def from_transformers(cls, hf_model: nn.Module, attn_implementation: str | None = None):
        """Converts a live transformers OpenAIGPT* model (same weights, dtype and device)."""
        return checkpoint.from_transformers(cls, hf_model, attn_implementation)
