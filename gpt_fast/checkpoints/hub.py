"""Finds a model folder: a local directory, else huggingface_hub's cache when that package is installed.

Kept thin on purpose: nothing here can be exercised without network access except the local-folder path and
the error raised when huggingface_hub is missing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# A Hugging Face Hub repository id: "name" or "org/name", each part letters, digits, "-", "_" and ".", starting and
# ending with a letter or digit, without "--" or ".."; the name at most 96 characters.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"(?:{_HUB_PART}/)?{_HUB_PART}")


def looks_like_hub_id(name) -> bool:
    """Whether `name` has the form of a hub model id ("org/name" or "name"), as opposed to a file system path
    ("./x", "/x", "~/x", "a/b/c", "C:\\x")."""
    return (isinstance(name, str) and _HUB_ID.fullmatch(name) is not None and "--" not in name and ".." not in name
            and len(name.rpartition("/")[2]) <= 96)


def resolve_model_folder(name_or_path: str | os.PathLike, allow_patterns: list[str] | None = None,
                         hub_options: dict | None = None) -> Path:
    """Returns a local folder holding the files of `name_or_path`.

    A local directory is returned as it is. A hub id ("org/name" or "name", see looks_like_hub_id) that is not a
    local path is looked up with huggingface_hub.snapshot_download
    (which uses its cache and honours HF_HUB_OFFLINE), with hub_options (loading_options.HUB_OPTIONS: revision,
    cache_dir, token, ...) as its keyword arguments; without huggingface_hub a clear error says what to do.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a folder path or a model name, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{str(path)!r} is a file; pass the folder that holds config.json and the weights")
    if not looks_like_hub_id(str(name_or_path)):
        raise FileNotFoundError(f"no such folder: {str(name_or_path)!r} (nor is it a hub model id like 'org/name')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is not a local folder, and huggingface_hub is not installed to fetch it. "
            "Either pass a local folder that holds the files (config.json and model.safetensors or "
            "pytorch_model.bin for a model; vocab.json and merges.txt or tokenizer.json for a tokenizer), or "
            "`pip install gpt_fast[hub]` (or `pip install huggingface_hub`) to download by name."
        ) from None
    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=allow_patterns, **(hub_options or {})))
    except Exception as error:  # the hub raises many kinds; name the model and keep the cause
        raise FileNotFoundError(f"could not find or download {str(name_or_path)!r}: {error}") from error
