"""BatchEncoding: what the tokenizer's __call__ returns, a dict with attribute access and `.to(device)`.

A small stand-in for transformers' class of the same name: `enc["input_ids"]`, `enc.input_ids`, `model(**enc)`
and `enc.to("cuda")` all work. Values are lists of ints, or tensors when the call asked for them.
"""

from __future__ import annotations

from collections import UserDict
from typing import Any


class BatchEncoding(UserDict):
    """Holds `input_ids` and `attention_mask` (lists or tensors); keys are also readable as attributes."""

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; `data` itself is set by UserDict.__init__, so guard against
        # recursion while the object is half-built (copy and pickle create it without calling __init__).
        if name == "data":
            raise AttributeError(name)
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no key or attribute {name!r}; keys: {list(self.data)}") from None

    def to(self, device: Any, *, non_blocking: bool = False) -> BatchEncoding:
        """Moves every tensor value to `device` (in place, like transformers) and returns self.

        Values that are not tensors (plain lists, when no `return_tensors` was asked for) stay as they are.
        """
        self.data = {
            key: value.to(device=device, non_blocking=non_blocking) if hasattr(value, "to") else value
            for key, value in self.data.items()
        }
        return self

    def __repr__(self) -> str:
        return f"BatchEncoding({self.data!r})"
