"""The encoding work behind the tokenizer's `__call__` and `pad`: resolving padding and truncation arguments the way
transformers does, truncating (one text or a pair) and padding `tokenizers` Encodings, turning them into the
features transformers returns, and padding already-encoded features (`tokenizer.pad`, used by transformers' data
collators)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tokenizers import Tokenizer

_LARGE_INTEGER = int(1e20)  # above this, model_max_length counts as "no limit" (as in transformers)
PADDING_CHOICES = "False, True, 'longest', 'max_length' or 'do_not_pad'"
TRUNCATION_CHOICES = "None, False, True, 'longest_first', 'only_first', 'only_second' or 'do_not_truncate'"
NO_PAD_TOKEN = ("asking to pad but the tokenizer has no pad token (GPT-1 has none): set one with "
                "`tokenizer.add_special_tokens({'pad_token': '<pad>'})` or `tokenizer.pad_token = ...`")
# What each padded feature is filled with ("input_ids" takes the pad token's id).
PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1}


def _check_int(name: str, value: Any, least: int) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
        raise ValueError(f"{name} must be None or an int >= {least}, got {value!r}")


def resolve_lengths(padding: Any, truncation: Any, max_length: Any, pad_to_multiple_of: Any, model_max_length: int,
                    has_pad_token: bool):
    """(padding mode or None, truncation strategy or None, max_length), resolved the way transformers does."""
    if not (isinstance(padding, bool) or padding in ("longest", "max_length", "do_not_pad")):
        raise ValueError(f"padding must be {PADDING_CHOICES}, got {padding!r}")
    if not (truncation is None or isinstance(truncation, bool)
            or truncation in ("longest_first", "only_first", "only_second", "do_not_truncate")):
        raise ValueError(f"truncation must be {TRUNCATION_CHOICES}, got {truncation!r}")
    _check_int("max_length", max_length, 0)
    _check_int("pad_to_multiple_of", pad_to_multiple_of, 1)
    if max_length is not None and padding is False and truncation is None:
        truncation = True  # transformers: max_length alone means "truncate to it"
    mode = None if padding in (False, "do_not_pad") else "longest" if padding is True else padding
    strategy = None if truncation in (None, False, "do_not_truncate") else (
        "longest_first" if truncation is True else truncation)
    if max_length is None:
        limited = model_max_length <= _LARGE_INTEGER
        if mode == "max_length":
            mode, max_length = (mode, model_max_length) if limited else (None, None)
        if strategy is not None:
            strategy, max_length = (strategy, model_max_length) if limited else (None, None)
    if mode is not None and not has_pad_token:
        raise ValueError(NO_PAD_TOKEN)
    return mode, strategy, max_length


def encode(backend: Tokenizer, inputs: list, is_pretokenized: bool, add_special_tokens: bool,
           strategy: str | None, max_length: int | None, side: str, stride: int = 0) -> list:
    """backend.encode_batch(inputs) (texts or (text, pair) tuples), truncated to max_length by `strategy` on
    `side` when a strategy is given (the backend's own truncation, which splits a pair's budget as transformers'
    does, and keeps what it cuts off, `stride` tokens overlapping, in each Encoding's .overflowing); the backend is
    left without truncation afterwards."""
    if strategy is None:
        return backend.encode_batch(inputs, is_pretokenized=is_pretokenized, add_special_tokens=add_special_tokens)
    try:
        backend.enable_truncation(max_length, stride=stride, strategy=strategy, direction=side)
    except Exception as error:  # the backend refuses some combinations with its own exception type
        raise ValueError(f"cannot truncate to max_length={max_length} with {strategy!r}: {error}") from None
    try:
        return backend.encode_batch(inputs, is_pretokenized=is_pretokenized, add_special_tokens=add_special_tokens)
    except BaseException as error:  # also the Rust panic (a BaseException) when a pair leaves a part <= stride
        if not isinstance(error, Exception) and type(error).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit
        raise ValueError(f"truncation {strategy!r} to max_length={max_length} (stride {stride}) failed: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    finally:
        backend.no_truncation()


def check_stride(stride: Any, max_length: int | None) -> int:
    """stride: an int >= 0, below max_length when truncating (the backend would panic on it)."""
    _check_int("stride", stride, 0)
    if stride and max_length is not None and stride >= max_length:
        raise ValueError(f"stride ({stride}) must be less than max_length ({max_length}): each overflowing row "
                         "repeats `stride` tokens of the row before it")
    return stride


def with_overflow(encodings: list, overflowing: bool) -> tuple[list, list[int]]:
    """(rows, the input each row comes from): with `overflowing`, each Encoding followed by its overflowing
    parts, as transformers' return_overflowing_tokens lays them out."""
    if not overflowing:
        return encodings, list(range(len(encodings)))
    rows = [(i, row) for i, e in enumerate(encodings) for row in (e, *e.overflowing)]
    return [row for _, row in rows], [i for i, _ in rows]


def padded_length(lengths: list[int], mode: str | None, max_length: int | None, pad_to_multiple_of: int | None):
    """The length rows are padded to (None: no padding)."""
    if mode is None or not lengths:
        return None
    target = max_length if mode == "max_length" else max(lengths)
    if pad_to_multiple_of is not None:
        target = math.ceil(target / pad_to_multiple_of) * pad_to_multiple_of
    return target


def features(encodings: list, return_token_type_ids: bool, return_attention_mask: bool,
             return_special_tokens_mask: bool, return_length: bool,
             return_offsets_mapping: bool = False) -> dict[str, list]:
    """The per-row features transformers returns, in its key order."""
    data = {"input_ids": [e.ids for e in encodings]}
    if return_token_type_ids:
        data["token_type_ids"] = [e.type_ids for e in encodings]
    if return_attention_mask:
        data["attention_mask"] = [e.attention_mask for e in encodings]
    if return_special_tokens_mask:
        data["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
    if return_offsets_mapping:
        data["offset_mapping"] = [e.offsets for e in encodings]
    if return_length:
        data["length"] = [len(e.ids) for e in encodings]
    return data


def _as_list(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def tensor_kind(encoded_inputs: Any) -> str | None:
    """"pt" or "np" when pad is given tensors or arrays (transformers then returns the same kind), else None."""
    first = encoded_inputs[0] if isinstance(encoded_inputs, (list, tuple)) and encoded_inputs else encoded_inputs
    ids = first.get("input_ids") if isinstance(first, Mapping) else None
    if isinstance(ids, (list, tuple)) and ids:
        ids = ids[0]
    kind = type(ids).__module__.split(".")[0]
    return {"torch": "pt", "numpy": "np"}.get(kind)


def collate(encoded_inputs: Any) -> tuple[dict[str, Any], bool]:
    """({key: rows}, is_batch) from what `pad` takes: a BatchEncoding or dict (of rows, or of one row's lists),
    or a list of such dicts (one per example, as a DataLoader hands them to a collator)."""
    if isinstance(encoded_inputs, (list, tuple)):
        if not encoded_inputs:
            raise ValueError("pad got an empty list of examples")
        if not all(isinstance(example, Mapping) for example in encoded_inputs):
            raise TypeError("pad takes a dict of features or a list of dicts (one per example), got a list of "
                            f"{type(encoded_inputs[0]).__name__}")
        keys = list(encoded_inputs[0])
        data = {key: [_as_list(example[key]) for example in encoded_inputs] for key in keys}
    elif isinstance(encoded_inputs, Mapping):
        data = {key: _as_list(value) for key, value in encoded_inputs.items()}
    else:
        raise TypeError(f"pad takes a dict of features or a list of dicts, got {type(encoded_inputs).__name__}")
    if "input_ids" not in data:
        raise ValueError(f"pad needs an 'input_ids' feature, got keys {list(data)}")
    ids = data["input_ids"]
    is_batch = bool(ids) and isinstance(ids[0], (list, tuple))
    if not is_batch:
        data = {key: [value] for key, value in data.items()}
    return data, is_batch


def pad_rows(data: dict[str, Any], target: int, side: str, pad_id: int, keep: tuple[str, ...] = ()) -> None:
    """Pads every per-token feature of data (rows as long as input_ids' rows) to target, in place; features
    named in `keep` are left as they are."""
    lengths = [len(row) for row in data["input_ids"]]
    for key, rows in data.items():
        if key != "input_ids" and (key not in PAD_VALUES or key in keep):
            continue
        if key != "input_ids" and [len(row) if isinstance(row, (list, tuple)) else -1 for row in rows] != lengths:
            raise ValueError(f"pad: feature {key!r} does not have one value per token of input_ids")
        value = pad_id if key == "input_ids" else PAD_VALUES[key]
        for i, row in enumerate(rows):
            fill = [value] * max(target - len(row), 0)
            rows[i] = list(row) + fill if side == "right" else fill + list(row)


def as_text_batch(text: Any, allow_batch: bool = True) -> tuple[list[str], bool]:
    """([texts], is_batch), with a clear TypeError for anything but a str or a list/tuple of str."""
    if isinstance(text, str):
        return [text], False
    if allow_batch and isinstance(text, (list, tuple)):
        for i, item in enumerate(text):
            if not isinstance(item, str):
                raise TypeError(f"text must be a str or a list of str; item {i} is a {type(item).__name__}")
        return list(text), True
    expected = "a str or a list of str" if allow_batch else "a str"
    raise TypeError(f"text must be {expected}, got {type(text).__name__}")


def texts_and_pairs(text: Any, text_pair: Any, is_split_into_words: bool) -> tuple[list, list | None, bool]:
    """(texts, pairs or None, is_batch) from the tokenizer's text and text_pair (as_input_batch's forms each), or
    from text alone holding a batch of (text, pair) items."""
    both = None if text_pair is not None or is_split_into_words else batch_of_pairs(text)
    if both is not None:
        return both[0], both[1], True
    texts, is_batch = as_input_batch(text, is_split_into_words)
    if text_pair is None:
        return texts, None, is_batch
    pairs, pair_is_batch = as_input_batch(text_pair, is_split_into_words)
    if pair_is_batch != is_batch or len(pairs) != len(texts):
        raise TypeError("text_pair must be a str for one text, or a list as long as the list of texts "
                        f"({len(texts)}), got {type(text_pair).__name__} of {len(pairs)}")
    return texts, pairs, is_batch


def batch_of_pairs(text: Any) -> tuple[list[str], list[str]] | None:
    """(texts, pairs) when text is a non-empty list of (text, pair) items, each a list or tuple of two str: the
    batch of pairs transformers' tokenizers take as `text` alone (zero-shot classification passes one); else None."""
    if not isinstance(text, (list, tuple)) or not text:
        return None
    if not all(isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(s, str) for s in item)
               for item in text):
        return None
    return [item[0] for item in text], [item[1] for item in text]


def as_input_batch(text: Any, is_split_into_words: bool) -> tuple[list, bool]:
    """([texts], is_batch) as as_text_batch, or with is_split_into_words ([lists of words], is_batch): a list of
    str is one text's words, a list of such lists a batch."""
    if not is_split_into_words:
        return as_text_batch(text)
    if isinstance(text, (list, tuple)) and text and all(isinstance(word, str) for word in text):
        return [list(text)], False
    if (isinstance(text, (list, tuple)) and text and all(
            isinstance(words, (list, tuple)) and all(isinstance(word, str) for word in words) for words in text)):
        return [list(words) for words in text], True
    raise TypeError("with is_split_into_words=True, text must be a non-empty list of words (str) or a list of such "
                    f"lists, got {text!r:.80}")


def is_batch_of_ids(token_ids: Any) -> bool:
    """Whether decode() was given several sequences: a 2-D tensor / array, or a list of sequences."""
    if getattr(token_ids, "ndim", 1) == 2:
        return True
    first = token_ids[0] if isinstance(token_ids, (list, tuple)) and token_ids else None
    return isinstance(first, (list, tuple)) or getattr(first, "ndim", 0) == 1


def as_id_list(token_ids: Any) -> list[int]:
    """A flat list of non-negative ints from an int, a list, a tensor or an array."""
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.tolist()
    if isinstance(token_ids, int):
        token_ids = [token_ids]
    if not isinstance(token_ids, (list, tuple)):
        raise TypeError(f"token_ids must be an int or a sequence of ints, got {type(token_ids).__name__}")
    for index in token_ids:
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"token_ids must hold non-negative ints, found {index!r} "
                             "(for several sequences use batch_decode)")
    return list(token_ids)


def as_tensor(values: list, kind: str, key: str = "input_ids"):
    """A (B, T) tensor ("pt") or array ("np") of equal-length rows, or a 1-D one of one value per row (`length`,
    a collator's `labels`)."""
    is_rows = bool(values) and isinstance(values[0], (list, tuple))
    if is_rows and len({len(row) for row in values}) > 1:
        raise ValueError(f"cannot make a tensor of {key!r} rows with different lengths: pass padding=True "
                         "(with a pad token set) or truncation=True with max_length")
    shape = (len(values), len(values[0]) if values else 0) if is_rows or not values else (len(values),)
    if key == "offset_mapping":
        shape += (2,)  # (B, T, 2): each token's (start, end)
    if kind == "np":
        import numpy

        return numpy.array(values).reshape(shape) if values else numpy.zeros(shape, dtype=numpy.int64)
    import torch

    return torch.tensor(values).reshape(shape) if values else torch.zeros(shape, dtype=torch.long)
