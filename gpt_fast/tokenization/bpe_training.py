"""Learning a GPT-1-format BPE with the `tokenizers` library: the pipeline around the BPE is the one the tokenizer
applies when encoding (build_gpt1_backend: BERT's normaliser and pre-tokeniser, "</w>" word ends, "<unk>"), so the
merges are learnt on exactly the words it will see.

- trained_backend: the shared step (a BpeTrainer over that pipeline, fed by a callable: files or an iterator);
- tokenizer_from_backend: an OpenAIGPTTokenizerFast of the learnt vocabulary and merges, special tokens kept at
  the ids the trainer gave them;
- train_new_tokenizer: transformers' `train_new_from_iterator` (same trainer settings: the tokenizer's special
  tokens, renamed by special_tokens_map, then new_special_tokens, first in the vocabulary; the "</w>" suffix; other
  keyword arguments to BpeTrainer), so both libraries learn the same vocabulary from the same text.
training/recipes/bpe.py trains the Shakespeare recipe's tokenizer from files with the first two.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from tokenizers import AddedToken, Tokenizer
from tokenizers.trainers import BpeTrainer

from gpt_fast.tokenization.tokenizer import END_OF_WORD, OpenAIGPTTokenizerFast, build_gpt1_backend


def check_vocab_size(vocab_size) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int of at least 2, got {vocab_size!r}")


def trained_backend(train: Callable[[Tokenizer, BpeTrainer], None], vocab_size: int, unk_token: str,
                    special_tokens: list[AddedToken | str], **trainer_kwargs: Any) -> Tokenizer:
    """A GPT-1 pipeline whose BPE train(backend, trainer) learnt: vocab_size pieces, special_tokens first."""
    check_vocab_size(vocab_size)
    backend = build_gpt1_backend({}, [], unk_token)
    trainer_kwargs = {"end_of_word_suffix": END_OF_WORD, "continuing_subword_prefix": "", **trainer_kwargs}
    train(backend, BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, **trainer_kwargs))
    return backend


def tokenizer_from_backend(backend: Tokenizer, special_tokens: list[AddedToken], **settings: Any
                           ) -> OpenAIGPTTokenizerFast:
    """The tokenizer of a trained backend's vocabulary and merges; special_tokens (in its vocabulary) stay added
    special tokens at their ids; settings: the constructor's other arguments (unk_token=, pad_token=, ...)."""
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]]
    added = {backend.token_to_id(token.content): token for token in special_tokens}
    return OpenAIGPTTokenizerFast(vocab=model["vocab"], merges=merges, added_tokens=added, **settings)


def train_new_tokenizer(tokenizer: OpenAIGPTTokenizerFast, text_iterator, vocab_size: int, length: int | None = None,
                        new_special_tokens: list | None = None, special_tokens_map: dict[str, str] | None = None,
                        **trainer_kwargs: Any) -> OpenAIGPTTokenizerFast:
    """tokenizer.train_new_from_iterator(...): see the module docstring. Its non-special added tokens are not
    kept (as transformers); the new tokenizer keeps model_max_length and the padding / truncation sides."""
    if tokenizer.use_original_pretokenization:
        raise NotImplementedError("train_new_from_iterator learns the BPE on BERT-split words; it is not available "
                                  "with use_original_pretokenization=True")
    rename = dict(special_tokens_map or {})
    special = [AddedToken(rename.get(token.content, token.content), single_word=token.single_word,
                          lstrip=token.lstrip, rstrip=token.rstrip, normalized=token.normalized, special=True)
               for token in tokenizer.added_tokens_decoder.values() if token.special]
    special += [token if isinstance(token, AddedToken) else AddedToken(token, special=True, normalized=False)
                for token in new_special_tokens or []]
    names = {name: rename.get(value, value) for name, value in tokenizer.special_tokens_map.items()}
    backend = trained_backend(lambda b, trainer: b.train_from_iterator(text_iterator, trainer=trainer, length=length),
                              vocab_size, names["unk_token"], special, **trainer_kwargs)
    sides = {side: getattr(tokenizer, side) for side in ("padding_side", "truncation_side")
             if side in tokenizer._given_sides}
    return tokenizer_from_backend(backend, special, model_max_length=tokenizer.model_max_length, **sides, **names)
