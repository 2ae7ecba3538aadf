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

import os
from typing import Any, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from gpt_fast.checkpoints import hub_upload
from gpt_fast.checkpoints.hub import resolve_model_folder
from gpt_fast.checkpoints.loading_options import pop_loading_options
from gpt_fast.tokenization import encoding
from gpt_fast.tokenization import tokenizer_files as files
from gpt_fast.tokenization.batch_encoding import BatchEncoding
from gpt_fast.tokenization.special_tokens import SpecialToken, SpecialTokenId, check_side
from gpt_fast.tokenization.tokenizer_files import SPECIAL_TOKEN_NAMES
from gpt_fast.tokenization.transformers_attributes import TransformersAttributes

VERY_LARGE_INTEGER = int(1e30)  # transformers' model_max_length when nothing sets one: "no limit"
END_OF_WORD = "</w>"


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


class OpenAIGPTTokenizerFast(hub_upload.PushToHubMixin, TransformersAttributes):
    """GPT-1's BPE tokenizer with transformers' interface (`__call__`, `encode`, `decode`, `save_pretrained`, ...).

    Build it with `from_pretrained(folder_or_name)`, or from files: `OpenAIGPTTokenizerFast(vocab_file, merges_file)`
    or `OpenAIGPTTokenizerFast(tokenizer_file=...)`, or from memory: `vocab={...}, merges=[("a", "b"), ...]`.
    """

    hub_kind = "tokenizer"  # push_to_hub's default commit message: "Upload tokenizer"

    model_input_names = ["input_ids", "attention_mask"]
    vocab_files_names = {"vocab_file": files.VOCAB_FILE, "merges_file": files.MERGES_FILE,
                         "tokenizer_file": files.TOKENIZER_FILE}

    bos_token, eos_token, unk_token, sep_token = SpecialToken(), SpecialToken(), SpecialToken(), SpecialToken()
    pad_token, cls_token, mask_token = SpecialToken(), SpecialToken(), SpecialToken()
    bos_token_id, eos_token_id = SpecialTokenId("bos_token"), SpecialTokenId("eos_token")
    unk_token_id, sep_token_id = SpecialTokenId("unk_token"), SpecialTokenId("sep_token")
    pad_token_id, cls_token_id = SpecialTokenId("pad_token"), SpecialTokenId("cls_token")
    mask_token_id = SpecialTokenId("mask_token")

    def __init__(self, vocab_file: str | os.PathLike | None = None, merges_file: str | os.PathLike | None = None,
                 tokenizer_file: str | os.PathLike | None = None, *, vocab: dict[str, int] | None = None,
                 merges: Sequence[tuple[str, str]] | None = None, unk_token: str = "<unk>",
                 model_max_length: int = VERY_LARGE_INTEGER, padding_side: str | None = None,
                 truncation_side: str | None = None, use_original_pretokenization: bool = False,
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
        # Saved by save_pretrained only when given here (or by the folder loaded from), as transformers does.
        self._given_sides = [name for name, value in (("padding_side", padding_side),
                                                      ("truncation_side", truncation_side)) if value is not None]
        self.padding_side = "right" if padding_side is None else padding_side
        self.truncation_side = "right" if truncation_side is None else truncation_side
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
        special_tokens_map.json when present), or a hub name (checkpoints/hub.py; transformers' loading options as
        the model's, checkpoints/loading_options.py, use_fast too). Keyword arguments (`pad_token=`,
        `padding_side=`, `model_max_length=`, ...) override the saved settings."""
        hub_options = pop_loading_options(kwargs, ("use_fast", "trust_remote_code"))
        folder = files.packaged_folder(name_or_path) or resolve_model_folder(name_or_path, files.ALL_FILES, hub_options)
        settings = {"name_or_path": str(name_or_path), **files.read_folder_settings(folder), **kwargs}
        return cls(**settings)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False,
                        **kwargs: Any) -> tuple[str, ...]:
        """Writes tokenizer.json, vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json:
        gpt_fast and transformers (`AutoTokenizer` / `OpenAIGPTTokenizer.from_pretrained`) both load them back
        to the same ids. Returns the paths written. push_to_hub=True then commits them (checkpoints/hub_upload.py:
        repo_id, commit_message, private, token, revision, create_pr); transformers' other options
        (legacy_format, filename_prefix) change nothing."""
        hub_kwargs = {name: kwargs.pop(name) for name in hub_upload.HUB_ARGUMENTS if name in kwargs}
        named = self.special_tokens_map
        config = {"tokenizer_class": "OpenAIGPTTokenizer", "model_max_length": self.model_max_length,
                  **{name: getattr(self, name) for name in self._given_sides},
                  "clean_up_tokenization_spaces": False, "do_lower_case": True, **named}
        if self._original is not None:
            config["use_original_pretokenization"] = True  # transformers ignores it and uses BERT's rules
        return hub_upload.save_then_push(lambda: files.write_folder(save_directory, self._backend, config, named),
                                         save_directory, push_to_hub, "tokenizer", hub_kwargs)

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
        self._padding_side = check_side("padding_side", value)

    @property
    def truncation_side(self) -> str:
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, value: str) -> None:
        self._truncation_side = check_side("truncation_side", value)

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

    def add_tokens(self, new_tokens: str | AddedToken | Sequence[str | AddedToken],
                   special_tokens: bool = False) -> int:
        """Adds tokens to the vocabulary (new ids at the end; strings already present are not added again) and
        returns how many were added. As in transformers a plain string becomes a normalised (lower-cased) token,
        or with special_tokens=True a verbatim special one that skip_special_tokens drops."""
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        if not isinstance(new_tokens, (list, tuple)) or not all(isinstance(t, (str, AddedToken)) for t in new_tokens):
            raise TypeError("add_tokens takes a str, an AddedToken or a list of them")
        tokens = [t if isinstance(t, AddedToken) else
                  AddedToken(t, normalized=not special_tokens, special=special_tokens) for t in new_tokens]
        return self._add_backend_tokens(tokens, special=special_tokens)

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 where an id is a named special token (already_has_special_tokens=True), else all 0: GPT-1 adds no
        special tokens around a text (transformers raises NotImplementedError in that case)."""
        if not already_has_special_tokens:
            return [0] * (len(token_ids_0) + len(token_ids_1 or []))
        if token_ids_1 is not None:
            raise ValueError("token_ids_1 must be None when already_has_special_tokens=True")
        special = set(self.all_special_ids)
        return [int(int(i) in special) for i in token_ids_0]

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

    def _encodings(self, texts: list, add_special_tokens: bool = True, pairs: list | None = None,
                   strategy: str | None = None, max_length: int | None = None, stride: int = 0,
                   is_split_into_words: bool = False) -> list:
        """tokenizers Encodings of texts (or of (text, pair) pairs; each a list of words when is_split_into_words),
        truncated when a strategy is given (the cut-off parts, `stride` tokens overlapping, in .overflowing)."""
        backend, inputs = self._backend, texts if pairs is None else list(zip(texts, pairs))
        if self._original is not None:
            if is_split_into_words:
                raise ValueError("is_split_into_words needs the default (BERT) pre-tokenization; this tokenizer "
                                 "splits text itself (use_original_pretokenization=True)")
            backend = self._words_backend
            split = self._original.split
            inputs = ([split(t) for t in texts] if pairs is None
                      else [(split(a), split(b)) for a, b in zip(texts, pairs)])
        return encoding.encode(backend, inputs, self._original is not None or is_split_into_words,
                               add_special_tokens, strategy, max_length, self.truncation_side, stride)

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """The BPE pieces of `text` (and of `pair` after it) ("hello</w>", ...)."""
        texts = encoding.as_text_batch(text, allow_batch=False)[0]
        pairs = None if pair is None else encoding.as_text_batch(pair, allow_batch=False)[0]
        return self._encodings(texts, add_special_tokens, pairs)[0].tokens

    def __call__(self, text: str | Sequence[str] | None = None, text_pair: str | Sequence[str] | None = None,
                 text_target: str | Sequence[str] | None = None, text_pair_target: str | Sequence[str] | None = None,
                 **options: Any) -> BatchEncoding:
        """Encodes `text` (see _encode_text for the options); with `text_target` (and its pair) also encodes that
        and returns its input_ids as "labels", or, without `text`, returns the target's encoding, as transformers."""
        if text is None and text_target is None:
            raise TypeError("text must be a str or a list of str, got NoneType (or give text_target)")
        if text is None:
            return self._encode_text(text_target, text_pair_target, **options)
        encoded = self._encode_text(text, text_pair, **options)
        if text_target is not None:
            encoded["labels"] = self._encode_text(text_target, text_pair_target, **options)["input_ids"]
        return encoded

    def _encode_text(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None, *,
                     padding: bool | str = False, truncation: bool | str | None = None, max_length: int | None = None,
                     stride: int = 0, is_split_into_words: bool = False, return_tensors: str | None = None,
                     return_attention_mask: bool | None = None, return_token_type_ids: bool | None = None,
                     return_overflowing_tokens: bool = False, return_special_tokens_mask: bool = False,
                     return_offsets_mapping: bool = False, return_length: bool = False,
                     add_special_tokens: bool = True, pad_to_multiple_of: int | None = None,
                     padding_side: str | None = None, verbose: bool = True) -> BatchEncoding:
        """Encodes a text (flat lists, or (1, T) tensors) or a list of texts (one row each, padded if asked), each
        optionally followed by its text_pair (token_type_ids 0 for the text, 1 for the pair); or a list of (text,
        pair) items as text alone.

        padding: False, True / "longest" (to the longest row), "max_length" (to max_length, else model_max_length).
        truncation: True / "longest_first" cuts rows to max_length (else model_max_length) on `truncation_side`,
        taking from the longer of a pair first; "only_first" / "only_second" cut one of them. max_length alone
        also truncates, as in transformers. return_overflowing_tokens: the cut-off tokens as further rows, each
        starting with the last `stride` tokens of the row before, and "overflow_to_sample_mapping" (the text each
        row comes from; the batch dimension is kept for one text). is_split_into_words: each text is a list of
        words (a batch: a list of such lists). return_offsets_mapping: each token's (start, end) characters in its
        text (in its word with is_split_into_words). return_tensors: None (lists), "pt" (torch) or "np" (numpy).
        token_type_ids are returned when asked (GPT-1's model_input_names do not include them); `verbose` is
        accepted for transformers' signature (nothing here warns)."""
        texts, pairs, is_batch = encoding.texts_and_pairs(text, text_pair, is_split_into_words)
        mode, strategy, max_length = encoding.resolve_lengths(padding, truncation, max_length, pad_to_multiple_of,
                                                              self.model_max_length, self.pad_token is not None)
        side = self.padding_side if padding_side is None else check_side("padding_side", padding_side)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        if return_offsets_mapping and self._original is not None:
            raise ValueError("return_offsets_mapping needs the default (BERT) pre-tokenization; this tokenizer splits "
                             "text itself (use_original_pretokenization=True)")
        stride = encoding.check_stride(stride, max_length if strategy else None)
        encodings = self._encodings(texts, add_special_tokens, pairs, strategy, max_length, stride, is_split_into_words)
        encodings, sample_of_row = encoding.with_overflow(encodings, return_overflowing_tokens)
        target = encoding.padded_length([len(e.ids) for e in encodings], mode, max_length, pad_to_multiple_of)
        if target is not None:
            for e in encodings:  # in place; pads the mask (0), types (0), special-token mask (1) and word ids too
                e.pad(target, direction=side, pad_id=self.pad_token_id, pad_type_id=0, pad_token=self.pad_token)
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        data = encoding.features(encodings, return_token_type_ids, return_attention_mask is not False,
                                 return_special_tokens_mask, return_length, return_offsets_mapping)
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample_of_row
        if return_tensors is not None:
            data = {key: encoding.as_tensor(value, return_tensors, key) for key, value in data.items()}
        elif not is_batch and not return_overflowing_tokens:
            data = {key: value if key == "length" else value[0] for key, value in data.items()}
        return BatchEncoding(data, encodings=encodings)

    def pad(self, encoded_inputs: Any, padding: bool | str = True, max_length: int | None = None,
            pad_to_multiple_of: int | None = None, padding_side: str | None = None,
            return_attention_mask: bool | None = None, return_tensors: str | None = None,
            verbose: bool = True) -> BatchEncoding:
        """Pads features already encoded (a BatchEncoding or dict of them, or a list of per-example dicts, as
        transformers' data collators pass): input_ids with the pad token, attention_mask (made if absent) and
        token_type_ids with 0, special_tokens_mask with 1; other features are kept as they are."""
        if return_tensors is None:
            return_tensors = encoding.tensor_kind(encoded_inputs)
        data, is_batch = encoding.collate(encoded_inputs)
        mode, _, max_length = encoding.resolve_lengths(padding, None, max_length, pad_to_multiple_of,
                                                       self.model_max_length, self.pad_token is not None)
        side = self.padding_side if padding_side is None else check_side("padding_side", padding_side)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        if return_attention_mask is not False and "attention_mask" not in data:
            data["attention_mask"] = [[1] * len(row) for row in data["input_ids"]]
        target = encoding.padded_length([len(row) for row in data["input_ids"]], mode, max_length, pad_to_multiple_of)
        if target is not None:  # a given mask is left as it is with return_attention_mask=False, as transformers
            encoding.pad_rows(data, target, side, self.pad_token_id,
                              keep=("attention_mask",) if return_attention_mask is False else ())
        if not is_batch:
            data = {key: value[0] for key, value in data.items()}
        if return_tensors is not None:
            data = {key: encoding.as_tensor(value, return_tensors, key) for key, value in data.items()}
        return BatchEncoding(data)

    def encode(self, text: str, text_pair: str | None = None, *, add_special_tokens: bool = True,
               padding: bool | str = False, truncation: bool | str | None = None, max_length: int | None = None,
               return_tensors: str | None = None):
        """The ids of one text (and its pair): a list of ints, or a (1, T) tensor with return_tensors="pt"."""
        encoding.as_text_batch(text, allow_batch=False)
        if text_pair is not None:
            encoding.as_text_batch(text_pair, allow_batch=False)
        return self(text, text_pair, padding=padding, truncation=truncation, max_length=max_length,
                    return_tensors=return_tensors, add_special_tokens=add_special_tokens)["input_ids"]

    # ---------------------------------------------------------------- decoding

    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str | list[str]:
        """Text of a sequence of ids (list, tensor or array, or one int); several sequences (a list of them, a 2-D
        tensor) give a list of texts, as transformers 5. Words are joined by spaces, with none around special
        tokens; ids beyond the vocabulary are ignored (all as in transformers, whose clean_up_tokenization_spaces
        has no effect on BPE tokenizers, so it is accepted and ignored here)."""
        if encoding.is_batch_of_ids(token_ids):
            return self.batch_decode(token_ids, skip_special_tokens=skip_special_tokens)
        ids = encoding.as_id_list(token_ids)
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
