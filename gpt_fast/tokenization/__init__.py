"""The GPT-1 tokenizer on the `tokenizers` library (tokenizer.py; its encoding and padding work in encoding.py, its
special-token attributes in special_tokens.py), its files (tokenizer_files.py; the published GPT-1 vocab.json and
merges.txt ship in data/), BatchEncoding and the optional original ftfy + spaCy pre-tokenisation. This package
file imports nothing."""
