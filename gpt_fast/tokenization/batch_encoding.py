"""BatchEncoding: what the tokenizer's __call__ returns, a dict with attribute access and `.to(device)`.

A small stand-in for transformers' class of the same name: `enc["input_ids"]`, `enc.input_ids`, `model(**enc)`
and `enc.to("cuda")` all work. Values are lists of ints, or tensors when the call asked for them.
"""

from __future__ import annotations

import logging
from collections import UserDict
from typing import Any, NamedTuple

logger = logging.getLogger("gpt_fast")


class CharSpan(NamedTuple):  # transformers' names: characters [start, end) of the original text
    start: int
    end: int


class TokenSpan(NamedTuple):  # tokens [start, end)
    start: int
    end: int


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

    # Mappings between characters, words and tokens, with transformers' signatures: the first argument is the
    # row when a second is given, else the index in row 0. None where nothing maps (padding, a space).
    def _row_and_index(self, batch_or_index: int, index: int | None, what: str):
        row, index = (0, batch_or_index) if index is None else (batch_or_index, index)
        return self._encoding(row, what), index

    def char_to_token(self, batch_or_char_index: int, char_index: int | None = None,
                      sequence_index: int = 0) -> int | None:
        encoding, index = self._row_and_index(batch_or_char_index, char_index, "char_to_token")
        return encoding.char_to_token(index, sequence_index)

    def char_to_word(self, batch_or_char_index: int, char_index: int | None = None,
                     sequence_index: int = 0) -> int | None:
        encoding, index = self._row_and_index(batch_or_char_index, char_index, "char_to_word")
        return encoding.char_to_word(index, sequence_index)

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None) -> CharSpan | None:
        encoding, index = self._row_and_index(batch_or_token_index, token_index, "token_to_chars")
        span = encoding.token_to_chars(index)
        return None if span is None else CharSpan(*span)

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        encoding, index = self._row_and_index(batch_or_token_index, token_index, "token_to_word")
        return encoding.token_to_word(index)

    def token_to_sequence(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        encoding, index = self._row_and_index(batch_or_token_index, token_index, "token_to_sequence")
        return encoding.token_to_sequence(index)

    def word_to_tokens(self, batch_or_word_index: int, word_index: int | None = None,
                       sequence_index: int = 0) -> TokenSpan | None:
        encoding, index = self._row_and_index(batch_or_word_index, word_index, "word_to_tokens")
        span = encoding.word_to_tokens(index, sequence_index)
        return None if span is None else TokenSpan(*span)

    def word_to_chars(self, batch_or_word_index: int, word_index: int | None = None,
                      sequence_index: int = 0) -> CharSpan | None:
        encoding, index = self._row_and_index(batch_or_word_index, word_index, "word_to_chars")
        span = encoding.word_to_chars(index, sequence_index)
        return None if span is None else CharSpan(*span)

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

        Values that are not tensors (plain lists, when no `return_tensors` was asked for) stay as they are. Anything
        but a device (a dtype: `batch.to(torch.float16)`, as APEX calls it) changes nothing and logs a warning, as
        in transformers: token ids must stay integers."""
        import torch

        if not isinstance(device, (str, int, torch.device)) or isinstance(device, bool):
            logger.warning("Attempting to cast a BatchEncoding to type %s. This is not supported.", device)
            return self
        self.data = {
            key: value.to(device=device, non_blocking=non_blocking) if hasattr(value, "to") else value
            for key, value in self.data.items()
        }
        return self

    def convert_to_tensors(self, tensor_type: str | None = None) -> BatchEncoding:
        """Makes every value a tensor ("pt") or array ("np"), in place (rows must be of one length); returns self."""
        from gpt_fast.tokenization.encoding import as_tensor

        if tensor_type is not None:
            self.data = {key: as_tensor(value, tensor_type, key) if isinstance(value, list) else value
                         for key, value in self.data.items()}
        return self

    def __getitem__(self, key: Any) -> Any:
        """A key's values, or (an int) the `tokenizers.Encoding` of that row, as transformers'."""
        if isinstance(key, int) and self._encodings is not None:
            return self._encodings[key]
        return super().__getitem__(key)

    @property
    def is_fast(self) -> bool:
        """Whether the rows' encodings are here (word_ids, char_to_token, ...): made by encoding text."""
        return self._encodings is not None

    @property
    def n_sequences(self) -> int | None:
        """1 for single texts, 2 for pairs; None when the encodings are not here."""
        return None if not self._encodings else max(encoding.n_sequences for encoding in self._encodings)

    def __repr__(self) -> str:
        return f"BatchEncoding({self.data!r})"
