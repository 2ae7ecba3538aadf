"""Writing a checkpoint's tensors as safetensors: one `model.safetensors`, or, past save_pretrained's
`max_shard_size`, transformers' sharded layout (`model-00001-of-0000N.safetensors` files and
`model.safetensors.index.json` with `metadata.total_size` and `weight_map`), which gpt_fast and transformers load.
A variant ("fp16") names the files as transformers does (variant_name): `model.fp16.safetensors`,
`model.fp16-00001-of-0000N.safetensors`, `model.safetensors.index.fp16.json`.

Tensors fill shards in order, a new shard starting when the next tensor would pass the limit (a tensor larger than
the limit gets a shard of its own), as transformers splits. Before writing, the weight files of an earlier save in
the folder under the same variant (`model.safetensors`, the index, `model-*-of-*.safetensors`) are removed, so that a
loader cannot read a stale single file beside new shards or the other way round; other variants' files stay.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
_VARIANT = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT])(i?)([Bb])")
_POWERS = {"K": 1, "M": 2, "G": 3, "T": 4}


def parse_size(value: int | str) -> int:
    """max_shard_size in bytes: an int, or transformers' strings ("5GB" = 5e9 bytes, "5GiB" = 5 * 2**30, "5Gb"
    = 5e9 bits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        number, unit, binary, byte = match.groups()
        size = int(float(number) * (1024 if binary else 1000) ** _POWERS[unit] / (1 if byte == "B" else 8))
    else:
        raise ValueError(f"max_shard_size must be a number of bytes or a size such as '5GB', '500MB' or '2GiB', "
                         f"got {value!r}")
    if size <= 0:
        raise ValueError(f"max_shard_size must be positive, got {value!r}")
    return size


def split(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """The tensors of state in shards of at most max_bytes each (one tensor over it: a shard alone), in order."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    filled = 0
    for name, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and filled + size > max_bytes:
            shards.append({})
            filled = 0
        shards[-1][name] = tensor
        filled += size
    return shards


def variant_name(name: str, variant: str | None) -> str:
    """transformers' name of a weight file for a variant: "model.safetensors" -> "model.fp16.safetensors",
    "model.safetensors.index.json" -> "model.safetensors.index.fp16.json"; name itself for None. A variant is
    letters, digits, "-" and "_" (dots between), so that it cannot name a path outside the folder."""
    if variant is None:
        return name
    if not isinstance(variant, str) or not _VARIANT.fullmatch(variant):
        raise ValueError(f"variant must be a name such as 'fp16' (letters, digits, '-', '_', '.'), got {variant!r}")
    stem, extension = name.rsplit(".", 1)
    return f"{stem}.{variant}.{extension}"


def write_weights(folder: Path, state: dict[str, torch.Tensor], max_shard_size: int | str,
                  variant: str | None = None) -> list[Path]:
    """Writes state (CPU tensors, no two sharing memory) into folder; returns the files written."""
    shards = split(state, parse_size(max_shard_size))
    single, index_name = variant_name(SAFE_WEIGHTS, variant), variant_name(SAFE_INDEX, variant)
    stem = single.removesuffix(".safetensors")
    shard_name = re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}\.safetensors")
    for old in folder.iterdir():
        if old.name in (single, index_name) or shard_name.fullmatch(old.name):
            old.unlink()
    if len(shards) == 1:
        save_file(shards[0], str(folder / single), metadata={"format": "pt"})
        return [folder / single]
    written, weight_map = [], {}
    for number, shard in enumerate(shards, start=1):
        name = f"{stem}-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        written.append(folder / name)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [*written, folder / index_name]
