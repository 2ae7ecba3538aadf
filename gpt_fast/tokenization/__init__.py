"""The GPT-1 tokenizer on the `tokenizers` library (tokenizer.py), its files, BatchEncoding and the optional
original ftfy + spaCy pre-tokenisation. This package file imports nothing."""
