"""Model outputs: dataclasses readable by attribute, by key and by index, as transformers' ModelOutput.

Keys and indices see only the fields that are set (not None), in declaration order; `to_tuple()` is what
`return_dict=False` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


class ModelOutput:
    def _present(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    def keys(self) -> list[str]:
        return [name for name, _ in self._present()]

    def values(self) -> list[Any]:
        return [value for _, value in self._present()]

    def items(self) -> list[tuple[str, Any]]:
        return self._present()

    def to_tuple(self) -> tuple:
        return tuple(self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            present = dict(self._present())
            if key not in present:
                raise KeyError(key)
            return present[key]
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._present())


@dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class OpenAIGPTDoubleHeadsModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    mc_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mc_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
