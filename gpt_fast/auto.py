"""AutoModel-style entry points that resolve an `openai-gpt` folder to gpt_fast's classes."""

from __future__ import annotations

import json
import os

from gpt_fast.checkpoints.checkpoint import config_dtype
from gpt_fast.checkpoints.hub import resolve_model_folder
from gpt_fast.checkpoints.loading_options import hub_options
from gpt_fast.models.configuration import CONFIG_NAME, OpenAIGPTConfig
from gpt_fast.models.heads import OpenAIGPTDoubleHeadsModel, OpenAIGPTForSequenceClassification, OpenAIGPTLMHeadModel
from gpt_fast.models.modeling import OpenAIGPTModel
from gpt_fast.names import check_model_type, dtype_argument, parse_dtype
from gpt_fast.tokenization.tokenizer import OpenAIGPTTokenizerFast
from gpt_fast.tokenization.tokenizer_files import packaged_folder


def _check_model_type(name_or_path, subfolder: str = "", hub: dict | None = None) -> None:
    folder = resolve_model_folder(name_or_path, allow_patterns=[f"{subfolder}/{CONFIG_NAME}".lstrip("/")],
                                  hub_options=hub)
    path = folder / subfolder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(folder)!r}")
    check_model_type(json.loads(path.read_text()).get("model_type", OpenAIGPTConfig.model_type), repr(str(folder)))


class _Auto:
    model_class: type

    def __init__(self):
        raise TypeError(f"{type(self).__name__} is not instantiated; use {type(self).__name__}.from_pretrained")

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs):
        _check_model_type(name_or_path, kwargs.get("subfolder", ""), hub_options(kwargs))
        return cls.model_class.from_pretrained(name_or_path, **kwargs)

    @classmethod
    def from_config(cls, config: OpenAIGPTConfig, *, dtype=None, torch_dtype=None, trust_remote_code: bool = False,
                    **kwargs):
        """A new model (randomly initialised) of config; as transformers', dtype (or torch_dtype; "auto": the
        config's dtype) is its dtype, trust_remote_code changes nothing."""
        dtype = parse_dtype(dtype_argument(dtype, torch_dtype))
        if dtype == "auto":
            dtype = config_dtype(config, "the config")
        model = cls.model_class(config, **kwargs)
        return model if dtype is None else model.to(dtype)


class AutoModel(_Auto):
    model_class = OpenAIGPTModel


class AutoModelForCausalLM(_Auto):
    model_class = OpenAIGPTLMHeadModel


class AutoModelForSequenceClassification(_Auto):
    model_class = OpenAIGPTForSequenceClassification


class AutoModelForMultipleChoice(_Auto):
    model_class = OpenAIGPTDoubleHeadsModel


class AutoConfig:
    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike, **kwargs) -> OpenAIGPTConfig:
        _check_model_type(name_or_path, kwargs.get("subfolder", ""), hub_options(kwargs))
        return OpenAIGPTConfig.from_pretrained(name_or_path, **kwargs)


class AutoTokenizer:
    """Resolves a GPT-1 folder (vocab.json + merges.txt, or tokenizer.json) to OpenAIGPTTokenizerFast."""

    def __init__(self):
        raise TypeError("AutoTokenizer is not instantiated; use AutoTokenizer.from_pretrained")

    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike, **kwargs) -> OpenAIGPTTokenizerFast:
        packaged = packaged_folder(name_or_path)
        if packaged is not None:  # the published GPT-1 tokenizer, shipped with gpt_fast
            return OpenAIGPTTokenizerFast.from_pretrained(name_or_path, **kwargs)
        folder = resolve_model_folder(name_or_path, hub_options=hub_options(kwargs))
        if (folder / CONFIG_NAME).is_file():
            _check_model_type(folder)
        return OpenAIGPTTokenizerFast.from_pretrained(folder, **kwargs)
