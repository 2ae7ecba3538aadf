"""GenerationConfig: generate()'s defaults of a model, with transformers' field names, stored in
generation_config.json.

As in transformers 5.x, a field left at None is unset and generate() falls back to transformers' global default
(DEFAULTS below lists them); `generate(..., generation_config=cfg, **kwargs)` takes cfg's set fields, then the
keyword arguments over them. Only the fields gpt_fast's generate() supports are accepted; a generation_config.json
written by transformers loads when every other field in it is unset (null).
"""

from __future__ import annotations

import copy
import json
import os

CONFIG_NAME = "generation_config.json"
DEFAULTS = {  # transformers' global defaults of the supported fields (what an unset field means)
    "max_length": 20, "max_new_tokens": None, "min_length": 0, "min_new_tokens": None, "early_stopping": False,
    "do_sample": False, "num_beams": 1, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0,
    "length_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None, "remove_invalid_values": False,
    "num_return_sequences": 1, "output_attentions": False, "output_hidden_states": False, "output_scores": False,
    "output_logits": False, "return_dict_in_generate": False, "use_cache": True, "pad_token_id": None,
    "bos_token_id": None, "eos_token_id": None, "stop_strings": None, "prompt_lookup_num_tokens": None,
    "max_matching_ngram_size": None, "sequence_bias": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None, "suppress_tokens": None, "begin_suppress_tokens": None, "min_p": None,
    "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "renormalize_logits": False, "max_time": None,
    "watermarking_config": None, "top_h": None, "encoder_repetition_penalty": 1.0, "low_memory": None,
    "cache_implementation": None, "disable_compile": False, "num_assistant_tokens": 20,
    "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.4,
}
IGNORED = ("transformers_version", "_from_model_config")  # bookkeeping keys of transformers' files
NOT_GENERATE_ARGS = ("bos_token_id",)  # kept and saved, not used by generate()


class GenerationConfig:
    def __init__(self, **kwargs):
        self._from_model_config = bool(kwargs.pop("_from_model_config", False))
        kwargs.pop("transformers_version", None)
        unknown = sorted(name for name, value in kwargs.items() if name not in DEFAULTS and value is not None)
        if unknown:
            raise ValueError(f"GenerationConfig: gpt_fast's generate does not support {unknown}; supported fields: "
                             f"{', '.join(DEFAULTS)}")
        for name in DEFAULTS:
            setattr(self, name, kwargs.get(name))

    def __repr__(self):
        return f"GenerationConfig({json.dumps(self.to_diff_dict(), sort_keys=True)})"

    def __eq__(self, other):
        return isinstance(other, GenerationConfig) and self.to_dict() == other.to_dict()

    def to_dict(self) -> dict:
        return {name: copy.deepcopy(getattr(self, name)) for name in DEFAULTS}

    def to_diff_dict(self) -> dict:
        """The set fields only (what is written to generation_config.json)."""
        return {name: value for name, value in self.to_dict().items() if value is not None}

    def generate_kwargs(self) -> dict:
        """The set fields, as generate() keyword arguments."""
        return {k: v for k, v in self.to_diff_dict().items() if k not in NOT_GENERATE_ARGS}

    def update(self, **kwargs) -> dict:
        """Sets the given known fields; returns the unknown ones (as transformers' update does)."""
        unused = {}
        for name, value in kwargs.items():
            if name in DEFAULTS:
                setattr(self, name, value)
            else:
                unused[name] = value
        return unused

    @classmethod
    def from_dict(cls, values: dict) -> "GenerationConfig":
        return cls(**values)

    @classmethod
    def from_model_config(cls, model_config) -> "GenerationConfig":
        """The special token ids of a model config (bos / eos / pad), as transformers' from_model_config."""
        values = {name: getattr(model_config, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
        config = cls(**values)
        config._from_model_config = True
        return config

    def save_pretrained(self, save_directory) -> None:
        if os.path.isfile(save_directory):
            raise ValueError(f"save_pretrained needs a directory, got the file {save_directory}")
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self.to_diff_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_pretrained(cls, pretrained_path, config_file_name: str = CONFIG_NAME) -> "GenerationConfig":
        """From a folder holding generation_config.json (or the path of the json file itself)."""
        path = os.fspath(pretrained_path)
        if os.path.isdir(path):
            path = os.path.join(path, config_file_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {config_file_name} at {pretrained_path}")
        with open(path, encoding="utf-8") as f:
            try:
                values = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(values).__name__}")
        return cls.from_dict(values)


def as_generation_config(value, what: str) -> GenerationConfig:
    """value itself if it is gpt_fast's GenerationConfig; transformers' (anything with to_diff_dict()) converted
    from its set fields, so a field gpt_fast does not support is refused by name as above."""
    if isinstance(value, GenerationConfig):
        return value
    diff = getattr(value, "to_diff_dict", None)
    if callable(diff):
        values = diff()
        if isinstance(values, dict):
            return GenerationConfig.from_dict(values)
    raise TypeError(f"{what} must be a GenerationConfig (gpt_fast's or transformers'), got {type(value).__name__}")


def model_generation_config(model) -> GenerationConfig:
    """model.generation_config: built from model.config at first use unless set (from_pretrained sets it)."""
    config = model.__dict__.get("_generation_config")
    if config is None:
        config = GenerationConfig.from_model_config(model.config)
        model.__dict__["_generation_config"] = config
    return config


class GenerationConfigMixin:
    """Gives a model class the `generation_config` attribute (read / set): built from the model config, loaded by
    from_pretrained from the folder's generation_config.json when there is one, written by save_pretrained."""

    @classmethod
    def from_pretrained(cls, name_or_path, *args, **kwargs):
        """The model's from_pretrained, then a local folder's generation_config.json (a hub name's is not read:
        fetching it would be a second download; pass the downloaded folder instead)."""
        loaded = super().from_pretrained(name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        path = os.path.join(os.path.expanduser(os.fspath(name_or_path)), CONFIG_NAME)
        if os.path.isfile(path):
            model.generation_config = GenerationConfig.from_pretrained(path)
        return loaded

    def write_checkpoint(self, save_directory, *args):
        path = super().write_checkpoint(save_directory, *args)  # save_pretrained's files
        self.generation_config.save_pretrained(save_directory)
        return path

    @property
    def generation_config(self) -> GenerationConfig:
        return model_generation_config(self)

    @generation_config.setter
    def generation_config(self, value) -> None:
        value = as_generation_config(value, "generation_config")
        self.__dict__["_generation_config"] = value
