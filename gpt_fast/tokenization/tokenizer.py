"""OpenAI GPT (GPT-1) tokenizer on the `tokenizers` library: a drop-in for transformers' OpenAIGPTTokenizer.

The pipeline is the one transformers 5 builds, so ids and decoded text are the same:
  - normaliser: BERT's (control characters dropped, CJK characters spaced, accents stripped, lower-cased);
  - pre-tokeniser: BERT's (split on whitespace and around every punctuation character);
  - model: BPE whose pieces end words with "</w>", "<unk>" for anything outside the vocabulary;
  - decoder: BPE's ("</w>" becomes a space between words, none after the last).
"<unk>" (and any token added with `add_special_tokens`) is an added special token: matched verbatim in the input
before normalisation, written as is by `decode` with no spaces around it, dropped by `skip_special_tokens=True`.
GPT-1 has no pad, bos or eos token: padding needs one set first, as in transformers.

Opt-in: `use_original_pretokenization=True` splits text like the original GPT-1 code (ftfy + spaCy, see
original_pretokenizer.py) instead of BERT's rules; the vocabulary, BPE and decoder stay the same.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from gpt_fast.checkpoints.hub import resolve_model_folder
from gpt_fast.tokenization import tokenizer_files as files
from gpt_fast.tokenization.batch_encoding import BatchEncoding
from gpt_fast.tokenization.tokenizer_files import SPECIAL_TOKEN_NAMES

VERY_LARGE_INTEGER = int(1e30)  # transformers' model_max_length when nothing sets one: "no limit"
_LARGE_INTEGER = int(1e20)  # above this, model_max_length counts as "no limit" (as in transformers)
END_OF_WORD = "</w>"
_PADDING_CHOICES = "False, True, 'longest', 'max_length' or 'do_not_pad'"
_TRUNCATION_CHOICES = "None, False, True, 'longest_first', 'only_first' or 'do_not_truncate'"
_SIDES = ("left", "right")


def build_gpt1_backend(vocab: dict[str, int], merges: list[tuple[str, str]], unk_token: str) -> Tokenizer:
    """The `tokenizers.Tokenizer` of GPT-1 (no added tokens yet): BERT normaliser and pre-tokeniser, BPE, decoder."""
    model = BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                end_of_word_suffix=END_OF_WORD, fuse_unk=False, unk_token=unk_token)
    backend = Tokenizer(model)
    # strip_accents=None follows lowercase, so accents are stripped.
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.BPEDecoder(suffix=END_OF_WORD)
    # GPT-1 adds nothing around a text; the same no-op template transformers writes, so tokenizer.json matches.
    backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    return backend


class _SpecialToken:
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


class _SpecialTokenId:
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


def _check_side(name: str, value: Any) -> str:
    if value not in _SIDES:
        raise ValueError(f"{name} must be 'left' or 'right', got {value!r}")
    return value


class OpenAIGPTTokenizerFast:
    """GPT-1's BPE tokenizer with transformers' interface (`__call__`, `encode`, `decode`, `save_pretrained`, ...).

    Build it with `from_pretrained(folder_or_name)`, or from files: `OpenAIGPTTokenizerFast(vocab_file, merges_file)`
    or `OpenAIGPTTokenizerFast(tokenizer_file=...)`, or from memory: `vocab={...}, merges=[("a", "b"), ...]`.
    """

    model_input_names = ["input_ids", "attention_mask"]
    vocab_files_names = {"vocab_file": files.VOCAB_FILE, "merges_file": files.MERGES_FILE,
                         "tokenizer_file": files.TOKENIZER_FILE}

    bos_token, eos_token, unk_token, sep_token = _SpecialToken(), _SpecialToken(), _SpecialToken(), _SpecialToken()
    pad_token, cls_token, mask_token = _SpecialToken(), _SpecialToken(), _SpecialToken()
    bos_token_id, eos_token_id = _SpecialTokenId("bos_token"), _SpecialTokenId("eos_token")
    unk_token_id, sep_token_id = _SpecialTokenId("unk_token"), _SpecialTokenId("sep_token")
    pad_token_id, cls_token_id = _SpecialTokenId("pad_token"), _SpecialTokenId("cls_token")
    mask_token_id = _SpecialTokenId("mask_token")

    def __init__(self, vocab_file: str | os.PathLike | None = None, merges_file: str | os.PathLike | None = None,
                 tokenizer_file: str | os.PathLike | None = None, *, vocab: dict[str, int] | None = None,
                 merges: Sequence[tuple[str, str]] | None = None, unk_token: str = "<unk>",
                 model_max_length: int = VERY_LARGE_INTEGER, padding_side: str = "right",
                 truncation_side: str = "right", use_original_pretokenization: bool = False,
                 added_tokens: dict[int, AddedToken] | None = None, name_or_path: str = "", **special_tokens: Any):
        unknown = set(special_tokens) - set(SPECIAL_TOKEN_NAMES)
        if unknown:
            raise TypeError(f"unexpected arguments {sorted(unknown)}; special tokens are {SPECIAL_TOKEN_NAMES}")
        vocab, merges, file_added = files.read_vocab_and_merges(vocab_file, merges_file, tokenizer_file, vocab, merges)
        self._special_tokens: dict[str, str | None] = dict.fromkeys(SPECIAL_TOKEN_NAMES)
        self.unk_token = unk_token
        for name, value in special_tokens.items():
            setattr(self, name, value)
        self._backend = build_gpt1_backend(vocab, merges, self.unk_token)
        # Added tokens in id order so that each gets back its saved id; then the named special tokens (which
        # transformers adds as special, verbatim tokens: "<unk>" keeps its vocabulary id 0).
        for index, token in sorted({**file_added, **(added_tokens or {})}.items()):
            self._add_backend_tokens([token], special=token.special, expected_id=index)
        named = [AddedToken(token, special=True, normalized=False) for token in self.all_special_tokens]
        self._add_backend_tokens(named, special=True)
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.name_or_path = str(name_or_path)
        self._original = None
        if use_original_pretokenization:
            from .original_pretokenizer import OriginalPreTokenizer

            self._original = OriginalPreTokenizer()
            self._words_backend = Tokenizer(self._backend.model)  # same BPE, words come pre-split and lower-cased

    # ---------------------------------------------------------------- loading and saving

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> OpenAIGPTTokenizerFast:
        """Loads a folder holding tokenizer.json, or vocab.json and merges.txt (plus tokenizer_config.json and
        special_tokens_map.json when present); any other name goes through `gpt_fast.hub.resolve_model_folder`.
        Keyword arguments (`pad_token=`, `padding_side=`, `model_max_length=`, ...) override the saved settings."""
        folder = resolve_model_folder(name_or_path, allow_patterns=files.ALL_FILES)
        settings = {"name_or_path": str(name_or_path), **files.read_folder_settings(folder), **kwargs}
        return cls(**settings)

    def save_pretrained(self, save_directory: str | os.PathLike, **_ignored: Any) -> tuple[str, ...]:
        """Writes tokenizer.json, vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json:
        gpt_fast and transformers (`AutoTokenizer` / `OpenAIGPTTokenizer.from_pretrained`) both load them back
        to the same ids. Returns the paths written."""
        named = self.special_tokens_map
        config = {"tokenizer_class": "OpenAIGPTTokenizer", "model_max_length": self.model_max_length,
                  "padding_side": self.padding_side, "truncation_side": self.truncation_side,
                  "clean_up_tokenization_spaces": False, "do_lower_case": True, **named}
        if self._original is not None:
            config["use_original_pretokenization"] = True  # transformers ignores it and uses BERT's rules
        return files.write_folder(save_directory, self._backend, config, named)

    # ---------------------------------------------------------------- vocabulary and special tokens

    def _add_backend_tokens(self, tokens: list[AddedToken], special: bool, expected_id: int | None = None) -> int:
        added = self._backend.add_special_tokens(tokens) if special else self._backend.add_tokens(tokens)
        if expected_id is not None and self._backend.token_to_id(tokens[0].content) != expected_id:
            raise ValueError(f"added token {tokens[0].content!r} was saved with id {expected_id} but gets id "
                             f"{self._backend.token_to_id(tokens[0].content)}: the tokenizer files disagree")
        return added

    @property
    def padding_side(self) -> str:
        return self._padding_side

    @padding_side.setter
    def padding_side(self, value: str) -> None:
        self._padding_side = _check_side("padding_side", value)

    @property
    def truncation_side(self) -> str:
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, value: str) -> None:
        self._truncation_side = _check_side("truncation_side", value)

    @property
    def use_original_pretokenization(self) -> bool:
        return self._original is not None

    @property
    def do_lower_case(self) -> bool:
        return True

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The `tokenizers.Tokenizer` doing the work (BERT-mode pipeline)."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Size of the base BPE vocabulary, without added tokens (40,478 for GPT-1)."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Size of the whole vocabulary, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    def get_added_vocab(self) -> dict[str, int]:
        return {token.content: index for index, token in sorted(self._backend.get_added_tokens_decoder().items())}

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {name: token for name, token in self._special_tokens.items() if token is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys(self.special_tokens_map.values()))

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def add_special_tokens(self, special_tokens_dict: dict[str, str]) -> int:
        """Names special tokens (`{"pad_token": "<pad>"}`), adding those not in the vocabulary as new ids at the end.
        Returns how many tokens were added to the vocabulary."""
        if not isinstance(special_tokens_dict, dict):
            raise TypeError(f"add_special_tokens takes a dict such as {{'pad_token': '<pad>'}}, "
                            f"got {type(special_tokens_dict).__name__}")
        added = 0
        for name, token in special_tokens_dict.items():
            if name not in SPECIAL_TOKEN_NAMES:
                raise ValueError(f"unknown special token name {name!r}; expected one of {SPECIAL_TOKEN_NAMES}")
            setattr(self, name, token)  # checks the type
            if token is not None:
                content = getattr(token, "content", token)
                added += self._add_backend_tokens([AddedToken(content, special=True, normalized=False)], True)
        return added

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Id of a token string (or list of them); a token outside the vocabulary gives the `<unk>` id."""
        if isinstance(tokens, str):
            index = self._backend.token_to_id(tokens)
            return self.unk_token_id if index is None else index
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False):
        """Token string of an id (None when out of range), or the list of them for a list of ids."""
        if isinstance(ids, int) or getattr(ids, "ndim", None) == 0:
            return self._backend.id_to_token(int(ids))
        skipped = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._backend.id_to_token(int(index)) for index in ids if int(index) not in skipped]

    # ---------------------------------------------------------------- encoding

    def _encodings(self, texts: list[str], add_special_tokens: bool = True) -> list:
        if self._original is None:
            return self._backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        words = [self._original.split(text) for text in texts]
        return self._words_backend.encode_batch(words, is_pretokenized=True, add_special_tokens=add_special_tokens)

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        """The BPE pieces of `text` ("hello</w>", ...)."""
        return self._encodings(_as_text_batch(text, allow_batch=False)[0], add_special_tokens)[0].tokens

    def _lengths(self, padding: Any, truncation: Any, max_length: Any, pad_to_multiple_of: Any):
        """(padding mode or None, truncate?, max_length), resolved the way transformers does."""
        if not (isinstance(padding, bool) or padding in ("longest", "max_length", "do_not_pad")):
            raise ValueError(f"padding must be {_PADDING_CHOICES}, got {padding!r}")
        if not (truncation is None or isinstance(truncation, bool)
                or truncation in ("longest_first", "only_first", "do_not_truncate")):
            raise ValueError(f"truncation must be {_TRUNCATION_CHOICES}, got {truncation!r}")
        for name, value, least in (("max_length", max_length, 0), ("pad_to_multiple_of", pad_to_multiple_of, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise ValueError(f"{name} must be None or an int >= {least}, got {value!r}")
        if max_length is not None and padding is False and truncation is None:
            truncation = True  # transformers: max_length alone means "truncate to it"
        mode = None if padding in (False, "do_not_pad") else "longest" if padding is True else padding
        truncate = truncation not in (None, False, "do_not_truncate")
        if max_length is None:
            limited = self.model_max_length <= _LARGE_INTEGER
            if mode == "max_length":
                mode, max_length = (mode, self.model_max_length) if limited else (None, None)
            if truncate:
                truncate, max_length = (True, self.model_max_length) if limited else (False, None)
        if mode is not None and self.pad_token is None:
            raise ValueError("asking to pad but the tokenizer has no pad token (GPT-1 has none): set one with "
                             "`tokenizer.add_special_tokens({'pad_token': '<pad>'})` or `tokenizer.pad_token = ...`")
        return mode, truncate, max_length

    def __call__(self, text: str | Sequence[str], *, padding: bool | str = False,
                 truncation: bool | str | None = None, max_length: int | None = None, return_tensors: str | None = None,
                 return_attention_mask: bool | None = None, add_special_tokens: bool = True,
                 pad_to_multiple_of: int | None = None, padding_side: str | None = None) -> BatchEncoding:
        """Encodes a text (flat lists, or (1, T) tensors) or a list of texts (one row each, padded if asked).

        padding: False, True / "longest" (to the longest row), "max_length" (to max_length, else model_max_length).
        truncation: True cuts rows to max_length (else model_max_length) on `truncation_side`; max_length alone
        also truncates, as in transformers. return_tensors: None (lists), "pt" (torch) or "np" (numpy)."""
        texts, is_batch = _as_text_batch(text)
        mode, truncate, max_length = self._lengths(padding, truncation, max_length, pad_to_multiple_of)
        side = self.padding_side if padding_side is None else _check_side("padding_side", padding_side)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        rows = [encoding.ids for encoding in self._encodings(texts, add_special_tokens)]
        if truncate:
            rows = [row[:max_length] if self.truncation_side == "right" else row[max(len(row) - max_length, 0):]
                    for row in rows]
        masks = [[1] * len(row) for row in rows]
        if mode is not None and rows:
            target = max_length if mode == "max_length" else max(map(len, rows))
            if pad_to_multiple_of is not None:
                target = math.ceil(target / pad_to_multiple_of) * pad_to_multiple_of
            pad_id = self.pad_token_id
            for i, row in enumerate(rows):
                fill = max(target - len(row), 0)
                if side == "right":
                    rows[i], masks[i] = row + [pad_id] * fill, masks[i] + [0] * fill
                else:
                    rows[i], masks[i] = [pad_id] * fill + row, [0] * fill + masks[i]
        data = {"input_ids": rows}
        if return_attention_mask is not False:
            data["attention_mask"] = masks
        if return_tensors is not None:
            data = {key: _as_tensor(value, return_tensors) for key, value in data.items()}
        elif not is_batch:
            data = {key: value[0] for key, value in data.items()}
        return BatchEncoding(data)

    def encode(self, text: str, *, add_special_tokens: bool = True, padding: bool | str = False,
               truncation: bool | str | None = None, max_length: int | None = None, return_tensors: str | None = None):
        """The ids of one text: a list of ints, or a (1, T) tensor with return_tensors="pt"."""
        _as_text_batch(text, allow_batch=False)
        return self(text, padding=padding, truncation=truncation, max_length=max_length,
                    return_tensors=return_tensors, add_special_tokens=add_special_tokens)["input_ids"]

    # ---------------------------------------------------------------- decoding

    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of a sequence of ids (list, tensor or array, or one int). Words are joined by spaces, with none
        around special tokens; ids beyond the vocabulary are ignored (all as in transformers, whose
        clean_up_tokenization_spaces has no effect on BPE tokenizers, so it is accepted and ignored here)."""
        ids = _as_id_list(token_ids)
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._backend.decoder.decode(tokens)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
                f"len={len(self)}, model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
                f"special_tokens={self.special_tokens_map}, "
                f"use_original_pretokenization={self.use_original_pretokenization})")


OpenAIGPTTokenizer = OpenAIGPTTokenizerFast  # transformers' name for the same tokenizer


def _as_text_batch(text: Any, allow_batch: bool = True) -> tuple[list[str], bool]:
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


def _as_id_list(token_ids: Any) -> list[int]:
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


def _as_tensor(rows: list[list[int]], kind: str):
    if len({len(row) for row in rows}) > 1:
        raise ValueError("cannot make a tensor of rows with different lengths: pass padding=True "
                         "(with a pad token set) or truncation=True with max_length")
    shape = (len(rows), len(rows[0]) if rows else 0)  # (B, T); explicit so that empty rows keep two dimensions
    if kind == "np":
        import numpy

        return numpy.array(rows, dtype=numpy.int64).reshape(shape)
    import torch

    return torch.tensor(rows, dtype=torch.long).reshape(shape)
