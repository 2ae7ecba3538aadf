"""The named special-token attributes of the tokenizer (`pad_token`, `pad_token_id`, ...) and the side check."""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken

_SIDES = ("left", "right")


class SpecialToken:
    """A named special token attribute (`pad_token`, `eos_token`, ...): a string or None, settable.

    Setting one only names it (as in transformers); to add a token that is not in the vocabulary, use
    `add_special_tokens`. An unknown name then maps to the `<unk>` id."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else obj._special_tokens[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        if value is not None and not isinstance(value, (str, AddedToken)):
            raise TypeError(f"{self.name} must be a str or None, got {type(value).__name__}")
        obj._special_tokens[self.name] = None if value is None else str(getattr(value, "content", value))


class SpecialTokenId:
    """The id of a named special token (None when the token is not set); setting it names the token of that id."""

    def __init__(self, token_name: str) -> None:
        self.token_name = token_name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        token = obj._special_tokens[self.token_name]
        return None if token is None else obj.convert_tokens_to_ids(token)

    def __set__(self, obj: Any, value: int | None) -> None:
        token = None if value is None else obj.convert_ids_to_tokens(value)
        if value is not None and token is None:
            raise ValueError(f"{self.token_name}_id={value} is not an id of this tokenizer (0..{len(obj) - 1})")
        obj._special_tokens[self.token_name] = token


def check_side(name: str, value: Any) -> str:
    if value not in _SIDES:
        raise ValueError(f"{name} must be 'left' or 'right', got {value!r}")
    return value
