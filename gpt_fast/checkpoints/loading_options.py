"""The keyword arguments of transformers' `from_pretrained` that say where and how to load, not what the model is.

transformers' model, config and tokenizer loaders take them beside the config overrides, and users' code passes them
out of habit (`device_map="cuda"`, `revision=`, `use_fast=True`, `trust_remote_code=True`, ...). gpt_fast takes
the same calls:
- hub options (HUB_OPTIONS) go to huggingface_hub.snapshot_download when the name is a hub id; a local folder
  ignores them, as transformers does;
- options that change nothing in gpt_fast (NO_EFFECT) are accepted and dropped, each for the reason given there;
- `device_map` picks the one device the whole model is loaded onto (device_from_map): gpt_fast does not split a
  model over devices, and says so when a map asks for that.
Anything else is the loader's business (the model's: a config attribute or a TypeError, as transformers).
"""

from __future__ import annotations

from typing import Any

import torch

from gpt_fast.names import parse_device

HUB_OPTIONS = ("revision", "cache_dir", "token", "force_download", "local_files_only", "proxies")

NO_EFFECT = {
    "low_cpu_mem_usage": "the model is always built on the meta device and each tensor read once into place",
    "trust_remote_code": "gpt_fast runs no code from a checkpoint or the hub",
    "use_fast": "gpt_fast has one tokenizer, the fast one (transformers' fast and slow GPT-1 tokenizers agree)",
}

AUTOMATIC_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def hub_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The hub options among kwargs that were given (None values dropped: snapshot_download's defaults)."""
    return {name: kwargs[name] for name in HUB_OPTIONS if kwargs.get(name) is not None}


def pop_loading_options(kwargs: dict[str, Any], no_effect: tuple[str, ...]) -> dict[str, Any]:
    """Removes the hub options and the no-effect options named in `no_effect` from kwargs (in place); returns
    hub_options(kwargs) as they were."""
    hub = hub_options(kwargs)
    for name in (*no_effect, *HUB_OPTIONS):
        kwargs.pop(name, None)
    return hub


def device_from_map(device_map, device) -> Any:
    """The device a model loads onto, from transformers' device_map and gpt_fast's device= (either may be None).

    A device (str, int, torch.device), or an automatic map ("auto", "balanced", ...: the first CUDA device when
    there is one, else the CPU); a dict is accepted when it puts every module on one device ({"": 0}); "disk" and
    maps over several devices raise NotImplementedError. Both arguments naming different devices is a ValueError."""
    if device_map is None:
        return device
    if isinstance(device_map, dict):
        targets = set(device_map.values())
        if len(targets) != 1:
            raise NotImplementedError(
                f"device_map={device_map!r} splits the model over {len(targets) or 'no'} devices; gpt_fast loads the "
                "whole model onto one device: pass device_map='cuda:0' (or device=) instead")
        (mapped,) = targets
    elif isinstance(device_map, str) and device_map in AUTOMATIC_MAPS:
        mapped = "cuda:0" if torch.cuda.is_available() else "cpu"
    elif isinstance(device_map, (str, int, torch.device)) and not isinstance(device_map, bool):
        mapped = device_map
    else:
        raise TypeError(f"device_map must be a device ('cpu', 'cuda:0', 0), 'auto' or a dict of them, got "
                        f"{device_map!r}")
    if mapped == "disk":
        raise NotImplementedError("device_map places modules on 'disk' (offloading); gpt_fast keeps the whole model "
                                  "on one device")
    mapped = parse_device(mapped)  # transformers' maps name CUDA devices by index
    if device is not None and _index_or_0(parse_device(device)) != _index_or_0(mapped):
        raise ValueError(f"device={device!r} and device_map={device_map!r} name different devices; pass one of them")
    return mapped


def _index_or_0(device: torch.device) -> tuple[str, int]:
    """"cuda" and "cuda:0" are the same device here (the first one)."""
    return device.type, device.index or 0
