"""Training a GPT-1-format BPE tokenizer on text files with the `tokenizers` library.

The pipeline around the BPE is the one gpt_fast's tokenizer (and transformers' OpenAIGPTTokenizer[Fast]) applies
when encoding: BERT's normaliser (lower-casing, accents stripped) and pre-tokeniser (whitespace and punctuation
splits), pieces that end a word carry "</w>", "<unk>" for the rest. So the merges are learnt on exactly the words
the tokenizer will see, and the saved vocab.json + merges.txt load in gpt_fast and transformers to the same ids.
"""

from __future__ import annotations

import os

from tokenizers import AddedToken

from gpt_fast.tokenization.bpe_training import check_vocab_size, tokenizer_from_backend, trained_backend
from gpt_fast.tokenization.tokenizer import OpenAIGPTTokenizerFast

UNK_TOKEN = "<unk>"


def train_gpt1_bpe(files: list[str | os.PathLike], vocab_size: int, output_dir: str | os.PathLike,
                   min_frequency: int = 2, model_max_length: int | None = None) -> OpenAIGPTTokenizerFast:
    """Learns a BPE vocabulary of vocab_size pieces ("<unk>" is id 0) from files; saves it to output_dir
    (vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json) and returns it."""
    check_vocab_size(vocab_size)
    paths = [os.fspath(path) for path in files]
    missing = [path for path in paths if not os.path.isfile(path)]
    if not paths or missing:
        raise FileNotFoundError(f"no text to train the tokenizer on: missing {missing}" if missing else
                                "no text to train the tokenizer on: no files given")
    unk = AddedToken(UNK_TOKEN, special=True, normalized=False)
    backend = trained_backend(lambda b, trainer: b.train(paths, trainer), vocab_size, UNK_TOKEN, [unk],
                              min_frequency=min_frequency, show_progress=False)
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    tokenizer = tokenizer_from_backend(backend, [unk], unk_token=UNK_TOKEN, **extra)
    tokenizer.save_pretrained(output_dir)
    return tokenizer
