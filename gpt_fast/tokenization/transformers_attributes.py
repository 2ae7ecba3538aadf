"""The attributes of transformers' tokenizers that data, training and serving tools read without tokenizing
anything (trl, vLLM-style loaders, datasets' map functions, `run_clm`-style block sizes): constants of GPT-1's
tokenizer, and views of the vocabulary. A mixin of OpenAIGPTTokenizerFast (tokenizer.py), which provides
`_backend` (the tokenizers.Tokenizer), `get_vocab()`, `get_added_vocab()` and `model_max_length`."""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Tokenizer

# transformers' message, word for word, so that code matching on it behaves the same
NO_CHAT_TEMPLATE = ("Cannot use chat template functions because tokenizer.chat_template is not set and no template "
                    "argument was passed! For information about writing templates and setting the "
                    "tokenizer.chat_template attribute, please see the documentation at "
                    "https://huggingface.co/docs/transformers/main/en/chat_templating")


class TransformersAttributes:
    is_fast = True  # backed by the tokenizers library: offsets, word ids and char spans are available
    pad_token_type_id = 0
    clean_up_tokenization_spaces = False  # decode never moves spaces around punctuation (transformers 5's BPE)
    split_special_tokens = False  # special tokens in the text are matched as such
    add_prefix_space = False
    add_bos_token = False
    add_eos_token = False
    chat_template = None  # GPT-1 was not trained on conversations and has no template

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The `tokenizers.Tokenizer` doing the work (BERT-mode pipeline); also `_tokenizer`, which code written
        for transformers' fast tokenizers reaches for."""
        return self._backend

    _tokenizer = backend_tokenizer

    @property
    def use_original_pretokenization(self) -> bool:
        return self._original is not None

    @property
    def do_lower_case(self) -> bool:
        return True

    def train_new_from_iterator(self, text_iterator, vocab_size: int, length: int | None = None,
                                new_special_tokens: list | None = None, special_tokens_map: dict | None = None,
                                **trainer_kwargs):
        """A new tokenizer with this one's pipeline and special tokens, its BPE learnt from text_iterator (texts,
        or batches of them), as transformers' (bpe_training.py)."""
        from gpt_fast.tokenization.bpe_training import train_new_tokenizer

        return train_new_tokenizer(self, text_iterator, vocab_size, length, new_special_tokens, special_tokens_map,
                                   **trainer_kwargs)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many special tokens encoding adds around one text (or a pair): none for GPT-1."""
        return 0

    @property
    def max_len_single_sentence(self) -> int:
        return self.model_max_length - self.num_special_tokens_to_add(pair=False)

    @property
    def max_len_sentences_pair(self) -> int:
        return self.model_max_length - self.num_special_tokens_to_add(pair=True)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """{id: AddedToken} of the tokens added to the BPE vocabulary ("<unk>" and any added since), by id."""
        return dict(sorted(self._backend.get_added_tokens_decoder().items()))

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        """{text: id} of the same tokens: get_added_vocab()."""
        return self.get_added_vocab()

    @property
    def vocab(self) -> dict[str, int]:
        """The whole vocabulary, added tokens included (get_vocab())."""
        return self.get_vocab()

    def apply_chat_template(self, conversation: Any, chat_template: str | None = None, **kwargs: Any):
        """GPT-1 has no chat template: raises transformers' ValueError. Rendering a template that is given (Jinja)
        is not implemented here; format the conversation as text and call the tokenizer."""
        if chat_template is None and self.chat_template is None:
            raise ValueError(NO_CHAT_TEMPLATE)
        raise NotImplementedError("gpt_fast's tokenizer does not render chat templates (GPT-1 was not trained on "
                                  "conversations): format the conversation as text and call the tokenizer on it")
