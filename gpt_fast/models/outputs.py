"""Model outputs: dataclasses that are also dicts, as transformers' ModelOutput.

The dict holds the fields that are set (not None), in declaration order, and stays in step with the attributes:
`out.logits`, `out["logits"]` and `out[1]` (an index counts only the fields set) read the same tensor. Being a
dict, an output works where code tests `isinstance(out, dict)` (transformers' Trainer, its `ignore_keys`),
torch.nn.DataParallel's gather rebuilds it from (key, value) pairs, and every subclass is a pytree node, so
torch.export can return it and DistributedDataParallel(static_graph=True) finds the tensors in it to synchronize
their gradients. `to_tuple()` is what `return_dict=False` returns.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.utils._pytree as pytree


def _flatten(output: ModelOutput) -> tuple[list[Any], list[str]]:
    return list(output.values()), list(output.keys())


def _flatten_with_keys(output: ModelOutput) -> tuple[list[tuple[Any, Any]], list[str]]:
    return [(pytree.MappingKey(name), value) for name, value in output.items()], list(output.keys())


def _unflatten(cls: type, values, names: list[str]) -> ModelOutput:
    return cls(**dict(zip(names, values)))


class ModelOutput(dict):
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        pytree.register_pytree_node(cls, _flatten, partial(_unflatten, cls), flatten_with_keys_fn=_flatten_with_keys,
                                    serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")

    def __post_init__(self):
        names = [f.name for f in fields(self)]
        first = getattr(self, names[0])
        if not isinstance(first, (Mapping, Iterator)) or any(
                getattr(self, name) is not None for name in names[1:]):
            return
        # Built from (key, value) pairs alone, as DataParallel's gather does: type(out)((k, v) for k in out).
        pairs = list(first.items() if isinstance(first, Mapping) else first)
        if not all(isinstance(pair, tuple) and len(pair) == 2 and pair[0] in names for pair in pairs):
            raise TypeError(f"{type(self).__name__} takes its fields, or (name, value) pairs of them, got {pairs!r}")
        setattr(self, names[0], None)
        for name, value in pairs:
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self.__dataclass_fields__:  # the dict again: the fields set, in declaration order
            present = [(field, getattr(self, field)) for field in self.__dataclass_fields__]
            dict.clear(self)
            dict.update(self, ((field, value) for field, value in present if value is not None))

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self.__dataclass_fields__:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        setattr(self, key, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return self.to_tuple()[key]

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"a {type(self).__name__}'s keys are its fields: set or clear one as an attribute "
                        "(out.name = value, or None to clear it)")

    __delitem__ = pop = popitem = setdefault = update = clear = _refuse

    def __reduce__(self):  # pickling and copying rebuild from the fields
        return type(self), tuple(getattr(self, f) for f in self.__dataclass_fields__)

    def to_tuple(self) -> tuple:
        return tuple(self.values())


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
