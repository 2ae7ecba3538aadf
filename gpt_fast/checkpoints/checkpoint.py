"""Checkpoint folders in, checkpoint folders out.

Loads `model.safetensors`, a sharded `model.safetensors.index.json`, or `pytorch_model.bin` (and its index),
with keys with or without the `transformer.` prefix, ignoring old causal-mask buffers, tying the LM head from
whichever of its two keys is present. The model is built on the meta device and every tensor is read straight
into the target dtype and device (the quantized buffers of a quantized checkpoint, gpt_fast/quantization, keep
the dtypes they are stored in). Saving writes config.json and model.safetensors that transformers loads (a quantized
model's are refused by transformers with an error: see quantization/config.py).
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import torch

from gpt_fast.checkpoints.hub import resolve_model_folder
from gpt_fast.checkpoints.shards import SAFE_INDEX, SAFE_WEIGHTS, variant_name, write_weights
from gpt_fast.checkpoints.tensor_files import iter_safetensors, iter_torch_bin
from gpt_fast.models.configuration import CONFIG_NAME, OpenAIGPTConfig
from gpt_fast.models.initialization import initialize_parameter
from gpt_fast.models.tied_state_dict import EMBEDDING, HEAD, full_state_dict
from gpt_fast.names import MODEL_DTYPES, parse_device, parse_dtype
from gpt_fast.quantization.apply import (
    apply_quantization,
    quantization_of,
    quantized_buffer_names,
    record_in_config,
)
from gpt_fast.quantization.config import CONFIG_KEY, QuantizationConfig, make_config

logger = logging.getLogger("gpt_fast")

BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of old checkpoints
TIED = (HEAD, EMBEDDING)

class LoadingInfo(dict):
    """What `output_loading_info=True` returns: transformers' dict (missing_keys, unexpected_keys, mismatched_keys
    as (model key, checkpoint shape, model shape), error_msgs) plus ignored_keys (old causal-mask buffers); lists, in
    checkpoint order. The keys are also readable as attributes."""

    def __init__(self):
        super().__init__(missing_keys=[], unexpected_keys=[], mismatched_keys=[], error_msgs=[], ignored_keys=[])

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def weight_files(folder: Path, variant: str | None = None,
                 use_safetensors: bool | None = None) -> list[tuple[Path, str]]:
    """[(file, kind)] for the checkpoint in folder, kind "safetensors" or "bin". variant ("fp16"): transformers'
    variant files (model.fp16.safetensors, ...) and only those. use_safetensors: True only safetensors, False
    only .bin, None either (safetensors first), as transformers."""
    kinds = [(SAFE_WEIGHTS, SAFE_INDEX, "safetensors"), (BIN_WEIGHTS, BIN_INDEX, "bin")]
    if use_safetensors is not None:
        kinds = kinds[:1] if use_safetensors else kinds[1:]
    looked_for = []
    for name, index, kind in kinds:
        name, index = variant_name(name, variant), variant_name(index, variant)
        looked_for += [name, index]
        if (folder / name).is_file():
            return [(folder / name, kind)]
        if (folder / index).is_file():
            shards = [folder / shard for shard in sorted(set(index_weight_map(folder / index).values()))]
            missing = [str(s) for s in shards if not s.is_file()]
            if missing:
                raise FileNotFoundError(f"{folder / index} names shards that do not exist: {missing}")
            return [(shard, kind) for shard in shards]
    raise FileNotFoundError(f"no weights in {str(folder)!r}: looked for {', '.join(looked_for)}")


def index_weight_map(path: Path) -> dict[str, str]:
    """The `weight_map` (tensor name -> shard file name) of a sharded checkpoint's index file, checked."""
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a valid index file: it is not JSON ({error})") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path} is not a valid index file: expected a JSON object, got {type(index).__name__}")
    if "weight_map" not in index:
        raise ValueError(f"{path} is not a valid index file: it has no field 'weight_map'")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict):
        raise ValueError(f"{path} is not a valid index file: field 'weight_map' must be an object mapping tensor "
                         f"names to shard files, got {type(weight_map).__name__}")
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise ValueError(f"{path} is not a valid index file: field 'weight_map' maps {key!r} to {shard!r}, "
                             "which is not the name of a file in the index's folder")
    return weight_map


def checkpoint_entries(files: list[tuple[Path, str]]):
    """(key, shape, stored dtype, load) of every tensor in weight_files' files."""
    for path, kind in files:
        yield from (iter_safetensors(path) if kind == "safetensors" else iter_torch_bin(path))


def target_key(key: str, prefix: str, expected: dict) -> str | None:
    """The model's name for a checkpoint key, adding or removing the base model's prefix as needed."""
    if key in expected:
        return key
    if prefix and f"{prefix}.{key}" in expected:
        return f"{prefix}.{key}"
    if not prefix and key.startswith("transformer.") and key[len("transformer."):] in expected:
        return key[len("transformer."):]
    return None


def _base_prefix(model) -> str:
    """The base model's attribute name in a head ("transformer"); "" for the base model itself."""
    return model.base_model_prefix if model.base_model is not model else ""


def config_dtype(config: OpenAIGPTConfig, where) -> torch.dtype | None:
    """The dtype a config names (`dtype`, as transformers 5 writes it, else the older `torch_dtype`), or None."""
    for field_name in ("dtype", "torch_dtype"):
        value = getattr(config, field_name, None)
        if value is not None:
            dtype = parse_dtype(value, f"{where}: field {field_name!r}")
            return None if dtype == "auto" else dtype
    return None


def stored_dtype(files: list[tuple[Path, str]]) -> torch.dtype | None:
    """The dtype of the first floating-point tensor (by name) of the checkpoint's first file, or None."""
    entries = checkpoint_entries(files[:1])
    floating = sorted((key, dtype) for key, _, dtype, _ in entries if dtype.is_floating_point)
    return floating[0][1] if floating else None


def resolve_dtype(dtype, config: OpenAIGPTConfig, folder: Path, files: list[tuple[Path, str]], where) -> torch.dtype:
    """The one dtype every tensor of the model is loaded in, as transformers decides it: an explicit dtype as given;
    None or "auto" (transformers 5 treats None as "auto"): the config's dtype, else the stored dtype of the
    checkpoint's first floating-point tensor, else torch's default dtype."""
    dtype = parse_dtype(dtype)
    if isinstance(dtype, torch.dtype):
        return dtype
    found = config_dtype(config, where) or stored_dtype(files)
    if found is not None and found not in MODEL_DTYPES:
        raise ValueError(f"the checkpoint in {str(folder)!r} is stored in {found}, which gpt_fast cannot run; pass "
                         f"dtype= one of {', '.join(str(d) for d in MODEL_DTYPES)}")
    return found or torch.get_default_dtype()


def saved_quantization(config: OpenAIGPTConfig, where) -> QuantizationConfig | None:
    """The quantization a checkpoint's config.json records (its quantization_config entry), or None."""
    entry = getattr(config, CONFIG_KEY, None)
    return None if entry is None else QuantizationConfig.from_dict(entry, f"{where}: field {CONFIG_KEY!r}")


def load_pretrained(cls, name_or_path, *, dtype, device, attn_implementation, config, output_loading_info,
                    config_overrides, ignore_mismatched_sizes=False, subfolder="", quantization=None,
                    quantization_group_size=None, quantization_lm_head=True, variant=None, use_safetensors=None,
                    hub_options=None):
    folder = resolve_model_folder(name_or_path, hub_options=hub_options)
    if subfolder:
        folder = folder / subfolder
        if not folder.is_dir():
            raise FileNotFoundError(f"no subfolder {subfolder!r} in {str(folder.parent)!r}")
    config_where = "the config= argument"
    if config is None:
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {str(folder)!r}" + (
                ": it holds weights only, as transformers' Trainer.save_model() writes them for a model that is not "
                "a transformers PreTrainedModel; pass config= (the trained model's config), or save with "
                "model.save_pretrained()" if (folder / SAFE_WEIGHTS).is_file() else ""))
        config = OpenAIGPTConfig.from_json_file(folder / CONFIG_NAME)
        _check_overrides(config, config_overrides, cls)
        if config_overrides:  # built again with them, so that they are validated with the file's fields
            config = OpenAIGPTConfig.from_json_file(folder / CONFIG_NAME, **config_overrides)
        config_where = str(folder / CONFIG_NAME)
    elif config_overrides:
        raise ValueError("pass either config= or config keyword overrides, not both")
    config.name_or_path = name_or_path  # as transformers: model.name_or_path, the Trainer's model card
    files = weight_files(folder, variant, use_safetensors)
    dtype, device = resolve_dtype(dtype, config, folder, files, config_where), parse_device(device)
    saved = saved_quantization(config, config_where)
    quantization = None if quantization in (None, "none") else quantization
    requested = None  # checked before anything is read
    if quantization is not None:
        requested = make_config(quantization, quantization_group_size, quantization_lm_head, "from_pretrained")
    if saved is not None and quantization is not None:
        raise ValueError(f"{str(folder)!r} holds a model saved quantized ({saved.scheme}); it loads quantized "
                         f"without quantization={quantization!r}, and cannot be quantized again")
    with torch.device("meta"):
        model = build_model(cls, config, attn_implementation)
        if saved is not None:  # empty quantized layers, filled from the file in the stored dtypes
            apply_quantization(model, saved, structure_only=True)
    expected = full_state_dict(model)  # the tied head's key too: files may name it
    keep_dtype = quantized_buffer_names(model)  # qweight / scales / zeros keep the format's dtypes
    prefix = _base_prefix(model)
    info, loaded = LoadingInfo(), {}
    for key, shape, stored, load in checkpoint_entries(files):
        if key.endswith(IGNORED_SUFFIXES):
            info.ignored_keys.append(key)
            continue
        name = target_key(key, prefix, expected)
        if name is None:
            info.unexpected_keys.append(key)
            continue
        if tuple(expected[name].shape) != shape and ignore_mismatched_sizes:
            info.mismatched_keys.append((name, torch.Size(shape), expected[name].shape))
            continue
        if tuple(expected[name].shape) != shape:
            raise ValueError(f"checkpoint weight {key!r} has shape {shape}, but the model's {name!r} needs "
                             f"{tuple(expected[name].shape)} (does config.json match the weights? "
                             "ignore_mismatched_sizes=True leaves such weights newly initialised)")
        if name in keep_dtype and expected[name].dtype != stored:
            raise ValueError(f"checkpoint tensor {key!r} is stored as {stored}, but the quantized format needs "
                             f"{expected[name].dtype}")
        # every tensor in the one dtype, whatever it was stored in (quantized buffers: as stored)
        loaded[name] = load(stored if name in keep_dtype else dtype, device)
    _tie_loaded(loaded, expected)
    mismatched = {name for name, _, _ in info.mismatched_keys}
    if TIED[1] in mismatched and config.tie_word_embeddings:
        mismatched.add(TIED[0])  # the tied head is the embedding, reported once as mismatched
    info.missing_keys.extend(k for k in expected if k not in loaded and k not in mismatched)
    missing_quantized = sorted(keep_dtype - set(loaded))
    if missing_quantized:
        raise ValueError(f"the quantized checkpoint in {str(folder)!r} lacks {', '.join(missing_quantized)} "
                         "(quantized weights cannot be newly initialised)")
    model.load_state_dict(loaded, strict=False, assign=True)
    _materialize_missing(model, device, dtype)
    model.tie_weights()
    model.eval()
    if requested is not None:
        apply_quantization(model, requested, structure_only=False)
    if info.missing_keys:
        logger.warning("Newly initialised (not in the checkpoint): %s", ", ".join(info.missing_keys))
    if info.unexpected_keys:
        logger.warning("Checkpoint keys the model does not use: %s", ", ".join(info.unexpected_keys))
    if info.mismatched_keys:
        logger.warning("Newly initialised (shape in the checkpoint differs): %s",
                       ", ".join(f"{key} {tuple(old)} -> {tuple(new)}" for key, old, new in info.mismatched_keys))
    return (model, info) if output_loading_info else model


def build_model(cls, config: OpenAIGPTConfig, attn_implementation):
    """cls(config, attn_implementation=...); a subclass whose __init__ takes the config alone (transformers'
    custom-head pattern: super().__init__(config), modules, self.post_init()) gets the backend through
    config.attn_implementation, which gpt_fast's models read when not given one."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.name == "attn_implementation" or p.kind is p.VAR_KEYWORD for p in parameters):
        return cls(config, attn_implementation=attn_implementation)
    if attn_implementation is not None:
        config.attn_implementation = attn_implementation
    return cls(config)


def _check_overrides(saved: OpenAIGPTConfig, overrides: dict, cls) -> None:
    """from_pretrained's other keyword arguments override the config's attributes; as transformers, a name that is
    not one is a TypeError (it was silently stored in the config, and saved with it). Removes a None
    quantization_config (the common `quantization_config=bnb if ... else None`) from overrides."""
    if CONFIG_KEY in overrides and overrides[CONFIG_KEY] is None and not hasattr(saved, CONFIG_KEY):
        del overrides[CONFIG_KEY]
    if CONFIG_KEY in overrides:
        raise ValueError(f"{cls.__name__}.from_pretrained: transformers' quantization_config (bitsandbytes, quanto, "
                         "...) is not supported; gpt_fast quantizes with quantization='int8', 'int4', 'int4-a8' or "
                         "'int8-a8'")
    unknown = [name for name in overrides if not hasattr(saved, name)]
    if unknown:
        raise TypeError(f"{cls.__name__}.from_pretrained() got unexpected keyword arguments {unknown}: they are "
                        "neither loading options nor attributes of the config to override")


def _tie_loaded(loaded: dict, expected: dict) -> None:
    """The LM head and the token embedding are one tensor: fill whichever key is absent from the other."""
    lm, embed = TIED
    if lm in expected and embed in expected:
        if lm in loaded and embed not in loaded:
            loaded[embed] = loaded[lm]
        elif embed in loaded and lm not in loaded:  # an untied head of its own is kept
            loaded[lm] = loaded[embed]


def _materialize_missing(model, device, dtype: torch.dtype) -> None:
    """Allocates and initialises parameters the checkpoint lacked, and recreates non-persistent buffers."""
    for module_name, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                fresh = torch.nn.Parameter(torch.empty(param.shape, dtype=dtype, device=device))
                initialize_parameter(f"{module_name}.{name}", fresh, model.config.initializer_range, module)
                setattr(module, name, fresh)
        if getattr(module, "position_ids", None) is not None and module.position_ids.is_meta:
            module.position_ids = torch.arange(model.config.n_positions, device=device)


def save_pretrained(model, save_directory, state_dict: dict | None = None, max_shard_size: int | str = "50GB",
                    variant: str | None = None) -> Path:
    variant_name(SAFE_WEIGHTS, variant)  # a bad variant fails before anything is written
    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{str(folder)!r} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    quantization = quantization_of(model)
    record_in_config(model.config, quantization)  # what the layers hold, whatever the config said
    config_dict = model.config.to_dict()
    config_dict["architectures"] = [type(model).__name__]
    # transformers 5 reads `dtype` before `torch_dtype`, older versions only `torch_dtype`: both name the saved dtype
    config_dict["dtype"] = config_dict["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    (folder / CONFIG_NAME).write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    state, seen = {}, set()
    for key, tensor in (model.state_dict() if state_dict is None else state_dict).items():
        if tensor.data_ptr() in seen and key == TIED[0]:
            continue  # the tied LM head is saved once, as the token embedding
        seen.add(tensor.data_ptr())
        state[key] = tensor.detach().to("cpu").contiguous()
    write_weights(folder, state, max_shard_size, variant)
    return folder


def from_transformers(cls, hf_model, attn_implementation):
    config = OpenAIGPTConfig.from_dict(hf_model.config.to_dict())
    parameter = next(hf_model.parameters())
    with torch.device("meta"):
        model = build_model(cls, config, attn_implementation)
    expected = full_state_dict(model)  # the tied head's key too: files may name it
    state = {}
    for key, tensor in hf_model.state_dict().items():
        name = target_key(key, _base_prefix(model), expected)
        if name is not None and not key.endswith(IGNORED_SUFFIXES):
            state[name] = tensor.detach().clone()
    _tie_loaded(state, expected)
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(f"the transformers model lacks weights {type(model).__name__} needs: {missing}")
    model.load_state_dict(state, strict=True, assign=True)
    _materialize_missing(model, parameter.device, parameter.dtype)
    model.tie_weights()
    return model.train(hf_model.training)
