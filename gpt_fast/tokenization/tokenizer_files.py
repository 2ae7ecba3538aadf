"""Reading and writing the GPT-1 tokenizer's files, in the layout transformers uses.

A tokenizer folder holds tokenizer.json (the `tokenizers` serialisation) and/or vocab.json + merges.txt (the plain
BPE files of the original release), plus optional tokenizer_config.json (model_max_length, padding side, special
tokens, added tokens by id) and special_tokens_map.json. Only the BPE vocabulary, the merges and the added tokens
are taken from tokenizer.json: the pipeline around them is always GPT-1's, as transformers does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer
from tokenizers.models import BPE

TOKENIZER_FILE, VOCAB_FILE, MERGES_FILE = "tokenizer.json", "vocab.json", "merges.txt"
CONFIG_FILE, SPECIAL_TOKENS_FILE = "tokenizer_config.json", "special_tokens_map.json"
ALL_FILES = [TOKENIZER_FILE, VOCAB_FILE, MERGES_FILE, CONFIG_FILE, SPECIAL_TOKENS_FILE]
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# tokenizer_config.json settings passed on to the constructor as they are.
_PLAIN_SETTINGS = ("padding_side", "truncation_side", "model_max_length", "use_original_pretokenization")
_ADDED_TOKEN_FLAGS = ("lstrip", "normalized", "rstrip", "single_word", "special")

Merges = list[tuple[str, str]]

# The published GPT-1 tokenizer files (vocab.json and merges.txt of openai/finetune-transformer-lm, MIT license; see
# data/NOTICE) ship with the package, so these names load offline without the hub.
PACKAGED_FOLDER = Path(__file__).parent / "data"
PACKAGED_NAMES = ("openai-community/openai-gpt", "openai-gpt")
PACKAGED_SHA256 = {VOCAB_FILE: "fdf49b19e7de236852091da09b84a7a3cd5e7b0e79916376cf45f6b8127b8078",
                   MERGES_FILE: "0ea9b51ae695073cd871e0358f7016311d671a7ff3963e367d5236522f294725"}


def packaged_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The packaged GPT-1 files' folder for the published model's names (unless a local folder has that name)."""
    if isinstance(name_or_path, str) and name_or_path in PACKAGED_NAMES and not Path(name_or_path).is_dir():
        return PACKAGED_FOLDER
    return None


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def added_token_from_json(entry: dict) -> AddedToken:
    """An AddedToken from its JSON form (tokenizer.json "added_tokens", tokenizer_config "added_tokens_decoder")."""
    return AddedToken(entry["content"], **{flag: entry.get(flag, False) for flag in _ADDED_TOKEN_FLAGS})


def added_token_to_json(token: AddedToken) -> dict:
    return {"content": token.content, **{flag: getattr(token, flag) for flag in _ADDED_TOKEN_FLAGS}}


def _token_content(value: Any) -> str | None:
    """A special-token entry of tokenizer_config.json / special_tokens_map.json: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _require_file(path: str | os.PathLike) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file not found: {os.fspath(path)!r}")
    return os.fspath(path)


def read_vocab_and_merges(vocab_file, merges_file, tokenizer_file, vocab, merges) -> tuple[dict, Merges, dict]:
    """(vocab, merges, added tokens by id) from exactly one source: tokenizer.json, vocab+merges files, memory."""
    given = [tokenizer_file is not None, vocab_file is not None or merges_file is not None,
             vocab is not None or merges is not None]
    if sum(given) != 1:
        raise ValueError("pass exactly one of: tokenizer_file; vocab_file and merges_file; vocab and merges")
    if given[2]:
        if vocab is None or merges is None:
            raise ValueError("vocab and merges must be given together")
        return dict(vocab), [tuple(pair) for pair in merges], {}
    if given[1]:
        if vocab_file is None or merges_file is None:
            raise ValueError("vocab_file and merges_file must be given together")
        vocab, merges = BPE.read_file(_require_file(vocab_file), _require_file(merges_file))
        return vocab, merges, {}
    saved = read_json(_require_file(tokenizer_file))
    model = saved.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"{os.fspath(tokenizer_file)!r} holds a {model.get('type')!r} model; GPT-1 needs BPE")
    # Merges are "a b" strings in older files and [a, b] pairs in newer ones.
    merges = [tuple(pair.split(" ")) if isinstance(pair, str) else tuple(pair) for pair in model["merges"]]
    added = {entry["id"]: added_token_from_json(entry) for entry in saved.get("added_tokens", [])}
    return model["vocab"], merges, added


def read_folder_settings(folder: Path) -> dict[str, Any]:
    """Constructor arguments for the tokenizer saved in `folder`: its files and its saved settings.

    model_max_length comes from tokenizer_config.json, else it is left to the constructor's default (no limit),
    as transformers does: config.json's n_positions does not set it."""
    if (folder / TOKENIZER_FILE).is_file():
        settings: dict[str, Any] = {"tokenizer_file": folder / TOKENIZER_FILE}
    elif (folder / VOCAB_FILE).is_file() and (folder / MERGES_FILE).is_file():
        settings = {"vocab_file": folder / VOCAB_FILE, "merges_file": folder / MERGES_FILE}
    else:
        raise FileNotFoundError(f"no GPT-1 tokenizer files in {str(folder)!r}: looked for {TOKENIZER_FILE}, "
                                f"or {VOCAB_FILE} together with {MERGES_FILE}")
    if (folder / SPECIAL_TOKENS_FILE).is_file():
        special = read_json(folder / SPECIAL_TOKENS_FILE)
        settings.update({name: _token_content(value) for name, value in special.items() if name in SPECIAL_TOKEN_NAMES})
    config = read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}
    settings.update({name: _token_content(config[name]) for name in SPECIAL_TOKEN_NAMES if name in config})
    settings.update({name: config[name] for name in _PLAIN_SETTINGS if name in config})
    if config.get("added_tokens_decoder"):
        settings["added_tokens"] = {int(index): added_token_from_json(entry)
                                    for index, entry in config["added_tokens_decoder"].items()}
    return settings


def write_folder(folder: str | os.PathLike, backend: Tokenizer, config: dict[str, Any],
                 special_tokens: dict[str, str]) -> tuple[str, ...]:
    """Writes tokenizer_config.json (`config` plus the added tokens by id), special_tokens_map.json,
    tokenizer.json and the plain vocab.json + merges.txt; returns the paths written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"save_pretrained needs a folder, {str(folder)!r} is a file")
    folder.mkdir(parents=True, exist_ok=True)
    added = sorted(backend.get_added_tokens_decoder().items())
    config = {**config, "added_tokens_decoder": {str(index): added_token_to_json(token) for index, token in added}}
    for name, content in ((CONFIG_FILE, config), (SPECIAL_TOKENS_FILE, special_tokens)):
        with open(folder / name, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
    backend.save(str(folder / TOKENIZER_FILE))
    backend.model.save(str(folder))  # vocab.json and merges.txt ("#version: 0.2" header, as the original files)
    return tuple(str(folder / name) for name in (CONFIG_FILE, SPECIAL_TOKENS_FILE, TOKENIZER_FILE, VOCAB_FILE,
                                                 MERGES_FILE))
