"""BatchEncoding: what the tokenizer's __call__ returns, a dict with attribute access and `.to(device)`.

A small stand-in for transformers' class of the same name: `enc["input_ids"]`, `enc.input_ids`, `model(**enc)`
and `enc.to("cuda")` all work. Values are lists of ints, or tensors when the call asked for them.
"""

from __future__ import annotations

from collections import UserDict
from typing import Any


class BatchEncoding(UserDict):
    """Holds `input_ids` and `attention_mask` (lists or tensors); keys are also readable as attributes.

    When made by the tokenizer's __call__ it also keeps the `tokenizers` Encodings of its rows, for `word_ids`,
    `tokens` and `sequence_ids` (the results of `pad` have none, as in transformers)."""

    def __init__(self, data: dict | None = None, encodings: list | None = None):
        super().__init__(data)
        self._encodings = encodings

    @property
    def encodings(self) -> list | None:
        """The `tokenizers.Encoding` of each row, or None when this batch was not made by encoding text."""
        return self._encodings

    def _encoding(self, batch_index: int, what: str):
        if self._encodings is None:
            raise ValueError(f"{what}() needs the encodings of the rows: only a BatchEncoding returned by calling "
                             "the tokenizer on text has them")
        return self._encodings[batch_index]

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """For each token of row batch_index, the index of the word it comes from (None for padding); a pair's
        second text counts its words from 0 again."""
        return self._encoding(batch_index, "word_ids").word_ids

    def tokens(self, batch_index: int = 0) -> list[str]:
        return self._encoding(batch_index, "tokens").tokens

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """0 for tokens of the text, 1 for tokens of its pair, None for padding."""
        return self._encoding(batch_index, "sequence_ids").sequence_ids

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; `data` itself is set by UserDict.__init__, so guard against
        # recursion while the object is half-built (copy and pickle create it without calling __init__).
        if name in ("data", "_encodings"):
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
