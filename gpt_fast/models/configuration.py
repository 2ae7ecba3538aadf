"""OpenAIGPTConfig: the GPT-1 hyper-parameters, read from and written to config.json.

Reads both the published legacy form (`n_ctx`, `n_special`, `predict_special_tokens`, `task_specific_params`) and
the current transformers form, keeps every key it does not know so a round trip loses nothing, and answers to
transformers' aliases (`hidden_size`, `num_attention_heads`, `num_hidden_layers`, `max_position_embeddings`).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from gpt_fast.checkpoints import hub_upload
from gpt_fast.checkpoints.hub import resolve_model_folder
from gpt_fast.checkpoints.loading_options import NO_EFFECT, pop_loading_options
from gpt_fast.names import MODEL_TYPE, check_model_type

ACTIVATIONS = ("gelu", "relu", "silu", "swish")  # "gelu" is the tanh approximation, as in the reference
SUMMARY_TYPES = ("last", "first", "mean", "cls_index")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
CONFIG_NAME = "config.json"

ALIASES = {
    "hidden_size": "n_embd",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
    "max_position_embeddings": "n_positions",
}

DEFAULTS: dict[str, Any] = {
    "vocab_size": 40478,
    "n_positions": 512,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "afn": "gelu",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "summary_activation": None,
    "summary_proj_to_labels": True,
    "summary_first_dropout": 0.1,
    "summary_last_dropout": 0.0,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "tie_word_embeddings": True,
    "problem_type": None,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict": True,
}


BOOLEANS = ("summary_use_proj", "summary_proj_to_labels", "tie_word_embeddings", "output_attentions",
            "output_hidden_states", "return_dict")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class OpenAIGPTConfig(hub_upload.PushToHubMixin):
    """GPT-1 configuration. Any keyword not listed in DEFAULTS is kept as an attribute and written back."""

    model_type = MODEL_TYPE
    is_encoder_decoder = False  # read by data collators, pipelines and trainers to choose decoder-only handling
    attribute_map = ALIASES  # transformers' name for the aliases (PEFT and accelerate read it)
    hub_kind = "config"  # push_to_hub's default commit message: "Upload config"

    def __init__(self, **kwargs: Any):
        for alias, name in ALIASES.items():
            if alias in kwargs:
                value = kwargs.pop(alias)
                if name in kwargs and kwargs[name] != value:
                    raise ValueError(f"config gives both {name}={kwargs[name]!r} and its alias {alias}={value!r}")
                kwargs[name] = value
        kwargs.pop("model_type", None)
        self._name_or_path = str(kwargs.pop("_name_or_path", kwargs.pop("name_or_path", "")))  # not written back
        id2label = kwargs.pop("id2label", None)
        num_labels = kwargs.pop("num_labels", None)
        kwargs.pop("label2id", None)  # derived from id2label
        for name, default in DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, copy.deepcopy(default)))
        self._extra_keys = sorted(kwargs)
        for name, value in kwargs.items():
            setattr(self, name, value)
        if id2label is not None:
            if not isinstance(id2label, dict) or not all(isinstance(k, int) or (isinstance(k, str) and k.isdigit())
                                                         for k in id2label):
                raise ValueError(f"config.id2label must map label ids (ints) to names, got {id2label!r}")
            self.id2label = {int(k): v for k, v in id2label.items()}
            if num_labels is not None and num_labels != len(self.id2label):
                raise ValueError(f"num_labels={num_labels} disagrees with id2label, which has {len(self.id2label)}")
        else:
            self.num_labels = 2 if num_labels is None else num_labels
        self.validate()

    # -- aliases and labels ------------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:  # only called when normal lookup fails
        if name in ALIASES:
            return getattr(self, ALIASES[name])
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(ALIASES.get(name, name), value)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, count: int) -> None:
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"num_labels must be a non-negative int, got {count!r}")
        self.id2label = {i: f"LABEL_{i}" for i in range(count)}

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in self.id2label.items()}

    # -- validation ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"config.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"config.n_embd ({self.n_embd}) must be divisible by config.n_head ({self.n_head})")
        if self.afn not in ACTIVATIONS:
            raise ValueError(f"config.afn must be one of {', '.join(ACTIVATIONS)}, got {self.afn!r}")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "summary_last_dropout"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"config.{name} must be a probability in [0, 1), got {value!r}")
        if not _is_number(self.layer_norm_epsilon) or not self.layer_norm_epsilon > 0:
            raise ValueError(f"config.layer_norm_epsilon must be a positive number, got {self.layer_norm_epsilon!r}")
        if not _is_number(self.initializer_range) or not self.initializer_range >= 0:
            raise ValueError(f"config.initializer_range must be a non-negative number, got {self.initializer_range!r}")
        for name in BOOLEANS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"config.{name} must be true or false, got {getattr(self, name)!r}")
        if self.summary_activation not in (None, "", "tanh"):  # the only ones the heads implement
            raise ValueError(f"config.summary_activation must be null or 'tanh', got {self.summary_activation!r}")
        for name in ("pad_token_id", "bos_token_id"):
            if getattr(self, name) is not None and not _is_int(getattr(self, name)):
                raise ValueError(f"config.{name} must be a token id (an int) or null, got {getattr(self, name)!r}")
        eos = self.eos_token_id
        if eos is not None and not _is_int(eos) and not (isinstance(eos, list) and eos and all(map(_is_int, eos))):
            raise ValueError(f"config.eos_token_id must be a token id (an int), a list of them, or null, got {eos!r}")
        if self.summary_type not in SUMMARY_TYPES:
            raise ValueError(f"config.summary_type must be one of {SUMMARY_TYPES}, got {self.summary_type!r}")
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"config.problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"config.pad_token_id {self.pad_token_id} is outside the vocabulary of {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    # -- transformers' accessors that tools call --------------------------------------------------------------
    @property
    def name_or_path(self) -> str:
        """What the model's from_pretrained loaded it from ("" otherwise, as in transformers)."""
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value) -> None:
        self._name_or_path = str(value)

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> "OpenAIGPTConfig":
        """The config of the text part of the model: all of it (transformers' Trainer and pipelines ask)."""
        return self

    def update(self, values: dict[str, Any]) -> None:
        """Sets each key of values as an attribute (a key not known before is kept and written back), then
        validates, as a config built with them would be."""
        for name, value in values.items():
            known = ALIASES.get(name, name) in DEFAULTS or name == "id2label" or hasattr(type(self), name)
            if not known and name not in self._extra_keys:
                self._extra_keys = sorted([*self._extra_keys, name])
            setattr(self, name, value)
        self.validate()

    # -- serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": self.model_type}
        for name in list(DEFAULTS) + self._extra_keys:
            out[name] = copy.deepcopy(getattr(self, name))
        out["id2label"] = dict(self.id2label)  # int keys, as transformers' to_dict (JSON writes them as strings)
        out["label2id"] = self.label2id
        return dict(sorted(out.items()))

    def to_diff_dict(self) -> dict[str, Any]:
        """to_dict's fields that differ from a default config's (model_type always), as transformers'."""
        default = type(self)().to_dict()
        return {name: value for name, value in self.to_dict().items()
                if name == "model_type" or name not in default or default[name] != value}

    def to_json_string(self, use_diff: bool = False) -> str:
        """JSON of to_dict(), or of to_diff_dict() with use_diff=True (transformers' default is True there)."""
        return json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = False) -> Path:
        """Writes the config as JSON to that file (what save_pretrained writes as config.json: every field)."""
        path = Path(json_file_path)
        if path.is_dir():
            raise IsADirectoryError(f"{str(path)!r} is a folder; to_json_file takes a file path "
                                    "(save_pretrained takes the folder)")
        path.write_text(self.to_json_string(use_diff))
        return path

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **hub_kwargs) -> Path:
        """Writes config.json; push_to_hub=True then commits it (checkpoints/hub_upload.py: repo_id, ...)."""
        folder = Path(save_directory)

        def save() -> Path:
            folder.mkdir(parents=True, exist_ok=True)
            return self.to_json_file(folder / CONFIG_NAME)

        return hub_upload.save_then_push(save, folder, push_to_hub, "config", hub_kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "OpenAIGPTConfig":
        check_model_type(data.get("model_type", cls.model_type), "the config")
        data = dict(data)
        if "num_labels" in overrides or "id2label" in overrides:  # labels given now replace the saved ones
            for key in ("num_labels", "id2label", "label2id"):
                data.pop(key, None)
        return cls(**{**data, **overrides})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> "OpenAIGPTConfig":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data, **overrides)
        except (ValueError, TypeError) as error:  # name the file the bad field came from
            raise (TypeError if isinstance(error, TypeError) else ValueError)(f"{path}: {error}") from None

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, subfolder: str = "",
                        **overrides: Any) -> "OpenAIGPTConfig":
        """config.json of a folder or hub name; overrides set attributes, except transformers' loading options
        (checkpoints/loading_options.py: the hub's revision, cache_dir, ...; trust_remote_code and the other
        options with no effect are dropped)."""
        hub_options = pop_loading_options(overrides, tuple(NO_EFFECT))
        folder = resolve_model_folder(name_or_path, [f"{subfolder}/{CONFIG_NAME}".lstrip("/")], hub_options)
        path = folder / subfolder / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {str(folder)!r}")
        return cls.from_json_file(path, **overrides)  # name_or_path stays "", as transformers' (the model's is set)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpenAIGPTConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"
