"""What every gpt_fast model shares: config, attention backend choice, weight initialisation, and the
from_pretrained / save_pretrained / from_transformers entry points (the file work itself is in checkpoint.py)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from gpt_fast.checkpoints import checkpoint, hub_upload
from gpt_fast.checkpoints.loading_options import device_from_map, pop_loading_options
from gpt_fast.models import tied_state_dict
from gpt_fast.models.checkpointing import keep_attention_outputs
from gpt_fast.models.configuration import OpenAIGPTConfig
from gpt_fast.models.embeddings import resize_token_embeddings
from gpt_fast.models.initialization import INITIALISED_TYPES, initialize_parameter
from gpt_fast.models.lm_loss import causal_lm_loss
from gpt_fast.names import check_attn_implementation, dtype_argument
from gpt_fast.quantization.apply import dequantize_model, quantization_of, quantize_model
from gpt_fast.quantization.config import DEFAULT_GROUP_SIZE, QuantizationConfig

DUMMY_INPUT_IDS = [[7, 6, 0, 0, 1], [1, 2, 3, 0, 0], [0, 0, 0, 4, 5]]  # transformers' DUMMY_INPUTS


class OpenAIGPTPreTrainedModel(hub_upload.PushToHubMixin, nn.Module):
    config_class = OpenAIGPTConfig
    base_model_prefix = "transformer"  # where the base model's keys sit in a head model's state dict
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]  # accelerate's FSDP auto-wrap (transformer_based_wrap) wraps each Block
    # transformers' Trainer passes `num_items_in_batch` only to models that say they take it. The heads whose loss
    # is a per-token mean (the LM head) do; the others average per row and say no (see docs/usage.md's differences).
    accepts_loss_kwargs = False

    def __init__(self, config: OpenAIGPTConfig, attn_implementation: str | None = None):
        super().__init__()
        if not isinstance(config, OpenAIGPTConfig):
            raise TypeError(f"config must be an OpenAIGPTConfig, got {type(config).__name__}")
        if attn_implementation is None:  # as transformers, the config's own attn_implementation= keyword
            attn_implementation = getattr(config, "attn_implementation", None)
        check_attn_implementation(attn_implementation)
        config.validate()
        self.config = config
        self._attn_implementation = attn_implementation
        tied_state_dict.register(self)  # the tied LM head held once in state dicts (models/tied_state_dict.py)
        self.model_tags: list[str] | None = None  # add_model_tags(); push_to_hub writes them into the model card

    # -- attention backend ---------------------------------------------------------------------------------
    @property
    def attn_implementation(self) -> str | None:
        return self._attn_implementation

    def set_attn_implementation(self, attn_implementation: str | None) -> None:
        """Switches every sub-model to another backend (None or "auto" = fastest available)."""
        check_attn_implementation(attn_implementation)
        for module in self.modules():
            if isinstance(module, OpenAIGPTPreTrainedModel):
                module._attn_implementation = attn_implementation

    # -- weights -------------------------------------------------------------------------------------------
    def init_weights(self, skip: nn.Module | None = None) -> None:
        """Initialises every weight as transformers does (normal with initializer_range) and ties the LM head.
        skip: a submodule already initialised (a head's base model, which initialises itself when built)."""
        std = self.config.initializer_range
        done = set() if skip is None else {id(p) for p in skip.parameters()}
        for name, param in self.named_parameters():
            if id(param) not in done:
                initialize_parameter(name, param, std)
        self.tie_weights()

    def post_init(self) -> None:
        """The last step of transformers' model __init__, which custom heads built on this class call: initialises
        the modules gpt_fast's own models did not build (nn.Linear, nn.Embedding, nn.LayerNorm, as transformers'
        _init_weights; other modules keep their own initialisation) and ties the LM head. gpt_fast's models inside
        (self.transformer, ...) initialised themselves when built and are left as they are."""
        own = {id(p) for module in self.modules() if isinstance(module, OpenAIGPTPreTrainedModel) and module is not self
               for p in module.parameters()}
        for module_name, module in self.named_modules():
            if isinstance(module, INITIALISED_TYPES):
                for name, param in module.named_parameters(recurse=False):
                    if id(param) not in own:
                        initialize_parameter(f"{module_name}.{name}", param, self.config.initializer_range, module)
        self.tie_weights()

    def tie_weights(self) -> None:
        lm_head = getattr(self, "lm_head", None)
        if isinstance(lm_head, nn.Linear) and self.config.tie_word_embeddings:  # a quantized head is a copy
            lm_head.weight = self.transformer.tokens_embed.weight
            lm_head.out_features = lm_head.weight.shape[0]  # follows a resized embedding

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters counted once each (the tied LM head is the token embedding); optionally only those that
        require grad, and optionally without the token and position embeddings (as transformers counts)."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters()  # parameters() already yields a shared tensor once
                   if id(p) not in skip and (p.requires_grad or not only_trainable))

    # -- transformers' model accessors ---------------------------------------------------------------------
    @property
    def base_model(self) -> nn.Module:
        """The OpenAIGPTModel inside a head (the model itself for OpenAIGPTModel)."""
        return getattr(self, self.base_model_prefix, self)

    def get_decoder(self) -> nn.Module:
        """The decoder stack, as transformers' method: the base model."""
        return self.base_model

    @property
    def name_or_path(self) -> str:
        """What from_pretrained loaded the model from (config.name_or_path; "" for a model made in code)."""
        return self.config.name_or_path

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes held by the parameters (a tied table once) and, with return_buffers, the buffers (transformers'
        method). A quantized model's weights and scales are buffers; the copies packed for the kernels (cached on the
        layers, ops/weight_cache.py) are not counted."""
        tensors = list(self.parameters()) + (list(self.buffers()) if return_buffers else [])
        return sum(tensor.nelement() * tensor.element_size() for tensor in tensors)

    def get_parameter_or_buffer(self, target: str) -> torch.Tensor:
        """The parameter or buffer named `target` ("transformer.h.0.attn.c_attn.weight"), as transformers' method;
        an AttributeError names a missing one."""
        for get in (self.get_parameter, self.get_buffer):  # torch's lookups, each an AttributeError when missing
            try:
                return get(target)
            except AttributeError:
                pass
        raise AttributeError(f"{type(self).__name__} has no parameter or buffer {target!r}")

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        """transformers' dummy inputs (tracing, export examples): a (3, 5) batch of token ids."""
        return {"input_ids": torch.tensor(DUMMY_INPUT_IDS, device=self.device)}

    def add_model_tags(self, tags: list[str] | str) -> None:
        """Adds tags (trainers add theirs) that push_to_hub writes into the model card, as transformers does."""
        self.model_tags = list(dict.fromkeys([*(self.model_tags or []), *([tags] if isinstance(tags, str) else tags)]))

    @property
    def loss_function(self):
        """transformers' `model.loss_function(logits, labels, vocab_size, num_items_in_batch=None,
        ignore_index=-100, shift_labels=None)`: the shifted causal-LM cross-entropy (float32), what every OpenAIGPT
        class of transformers returns here (models/lm_loss.py)."""
        return causal_lm_loss

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.tokens_embed

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        if not isinstance(embeddings, nn.Embedding):
            raise TypeError(f"expected an nn.Embedding, got {type(embeddings).__name__}")
        self.base_model.tokens_embed = embeddings
        self.tie_weights()

    def get_output_embeddings(self) -> nn.Linear | None:
        """The LM head (None for heads without one: OpenAIGPTModel and sequence classification)."""
        return getattr(self, "lm_head", None)

    def set_output_embeddings(self, head: nn.Linear) -> None:
        if not hasattr(self, "lm_head"):
            raise AttributeError(f"{type(self).__name__} has no output embeddings")
        self.lm_head = head

    @classmethod
    def can_generate(cls) -> bool:
        return callable(getattr(cls, "generate", None))

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Resizes the token embedding (and an untied LM head) to new_num_tokens rows, keeping the old rows;
        updates config.vocab_size; the tied LM head stays tied. See models/embeddings.py."""
        if self.quantization is not None:
            raise ValueError("resize_token_embeddings on a quantized model is not supported: resize the unquantized "
                             "model, then quantize it")
        return resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of, mean_resizing)

    # -- quantization ----------------------------------------------------------------------------------------
    def quantize(self, scheme: str, group_size: int | None = DEFAULT_GROUP_SIZE, lm_head: bool = True,
                 method: str = "rtn", calibration=None):
        """Weight-only quantization in place, for inference (gpt_fast/quantization): "int8" (per output channel)
        or "int4" (asymmetric, groups of group_size input features; group_size must divide every layer's input
        width), or "int4-a8" / "int8-a8" (int4 / int8, and each call's activations rounded to int8 per group of
        group_size with their own scale, for the CPU's VNNI byte products: faster decode, see
        docs/quantization.md). Quantizes every block's linear layers and, with lm_head, a copy of the tied LM head
        (the token embedding stays in the model's dtype). int4's method: "rtn" (round to nearest) or "gptq" (error
        compensation from `calibration`, token ids (count, T) or 1-D; same stored format). Returns the model, in
        eval mode."""
        return quantize_model(self, scheme, group_size, lm_head, method, calibration)

    def dequantize(self):
        """Undoes quantize() in place (transformers' method; quantization/apply.py: the blocks' layers keep their
        rounding error, a tied LM head takes the embedding's table again). Returns the model."""
        return dequantize_model(self)

    @property
    def quantization(self) -> QuantizationConfig | None:
        """How the model is quantized (bits, group_size, lm_head), or None."""
        return quantization_of(self)

    # -- gradient checkpointing ----------------------------------------------------------------------------
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False,
                                        keep_attention: bool = True) -> None:
        """Recomputes Blocks in the backward pass (torch.utils.checkpoint with activation_checkpointing_kwargs,
        use_reentrant=False by default) while the model is training: less memory, the same gradients.
        every_n_layers: checkpoint blocks 0, n, 2n, ...; offload: keep the saved block inputs in CPU memory;
        keep_attention: keep the attention kernels' outputs rather than recompute them (models/checkpointing.py;
        non-reentrant only, and not when the kwargs bring their own context_fn)."""
        if not isinstance(every_n_layers, int) or isinstance(every_n_layers, bool) or every_n_layers < 1:
            raise ValueError(f"every_n_layers must be an int >= 1, got {every_n_layers!r}")
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        if keep_attention and not kwargs["use_reentrant"] and "context_fn" not in kwargs:
            kwargs["context_fn"] = keep_attention_outputs
        self.base_model.gradient_checkpointing = {"kwargs": kwargs, "every_n_layers": every_n_layers,
                                                  "offload": bool(offload)}

    def activation_checkpointing_disable(self) -> None:
        self.base_model.gradient_checkpointing = None

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.base_model.gradient_checkpointing is not None

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs) -> None:
        """transformers' older name of activation_checkpointing_enable (every_n_layers=, offload= pass through)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

    def enable_input_require_grads(self) -> None:
        """The input embeddings' output requires gradients (transformers' method): with frozen embeddings (adapter
        training), reentrant activation checkpointing (use_reentrant=True) then has a graph to recompute through."""
        def require_grads(module, args, output):
            output.requires_grad_(True)

        self.disable_input_require_grads()
        self.__dict__["_input_require_grads"] = self.get_input_embeddings().register_forward_hook(require_grads)

    def disable_input_require_grads(self) -> None:
        handle = self.__dict__.pop("_input_require_grads", None)
        if handle is not None:
            handle.remove()

    # -- checkpoints ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                        torch_dtype: torch.dtype | str | None = None, device: torch.device | str | int | None = None,
                        device_map=None, attn_implementation: str | None = None,
                        config: OpenAIGPTConfig | None = None, output_loading_info: bool = False,
                        ignore_mismatched_sizes: bool = False, subfolder: str = "", variant: str | None = None,
                        use_safetensors: bool | None = None, quantization: str | None = None,
                        quantization_group_size: int | None = DEFAULT_GROUP_SIZE,
                        quantization_lm_head: bool = True, **kwargs):
        """Loads a folder (or a hub name, with huggingface_hub installed) straight into dtype and device.

        subfolder: the checkpoint's folder inside name_or_path. ignore_mismatched_sizes: a weight whose shape
        differs from the model's (built from config.json and the overrides) is left newly initialised instead of
        being an error. output_loading_info: also return a dict of missing_keys, unexpected_keys,
        mismatched_keys ((key, checkpoint shape, model shape) tuples), error_msgs (and ignored_keys).
        quantization: "int8", "int4", "int4-a8" or "int8-a8" quantizes the model once loaded in dtype (as
        model.quantize(quantization, quantization_group_size, quantization_lm_head)); a checkpoint saved quantized
        loads quantized without it.
        As transformers': device_map, one device for the whole model (checkpoints/loading_options.py:
        device_from_map); variant ("fp16": model.fp16.safetensors and its shards); use_safetensors (True: only
        safetensors files, False: only .bin); the hub's revision, cache_dir, token, force_download,
        local_files_only, proxies (for a hub name); low_cpu_mem_usage and trust_remote_code, accepted with no
        effect. Any other keyword overrides the config attribute of that name (a name that is none: TypeError)."""
        hub_options = pop_loading_options(kwargs, ("low_cpu_mem_usage", "trust_remote_code"))
        return checkpoint.load_pretrained(cls, name_or_path, dtype=dtype_argument(dtype, torch_dtype),
                                          device=device_from_map(device_map, device),
                                          attn_implementation=attn_implementation, config=config,
                                          output_loading_info=output_loading_info, config_overrides=kwargs,
                                          ignore_mismatched_sizes=ignore_mismatched_sizes, subfolder=subfolder,
                                          quantization=quantization, quantization_group_size=quantization_group_size,
                                          quantization_lm_head=quantization_lm_head, variant=variant,
                                          use_safetensors=use_safetensors, hub_options=hub_options)

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        state_dict: dict | None = None, push_to_hub: bool = False, max_shard_size: int | str = "50GB",
                        variant: str | None = None, safe_serialization: bool = True, save_function=None,
                        token=None, save_peft_format: bool = True, save_original_format: bool = True,
                        distributed_checkpoint: bool = False, **hub_kwargs) -> Path:
        """Writes config.json and model.safetensors, loadable by gpt_fast and (unless quantized) by transformers.
        A quantized model writes its qweight/scales/zeros and config.json's quantization_config. As transformers':
        state_dict, the tensors to write instead of the model's own (a sharded model's gathered weights);
        max_shard_size (bytes, or "5GB", "500MiB"), past which the weights go into model-0000i-of-0000N.safetensors
        shards and model.safetensors.index.json; variant ("fp16": model.fp16.safetensors, shards
        model.fp16-0000i-of-0000N.safetensors, index model.safetensors.index.fp16.json, read back by
        from_pretrained(variant=)); is_main_process=False writes nothing (the other ranks of a distributed job);
        push_to_hub=True then commits the files written to the Hub (checkpoints/hub_upload.py: repo_id, default the
        folder's name, commit_message, private, token, revision, create_pr). safe_serialization and save_function
        (accelerate's examples pass accelerator.save) are accepted and safetensors always written (transformers 5
        does the same); save_peft_format and save_original_format (gpt_fast writes transformers' own layout) change
        nothing. distributed_checkpoint=True is not supported: gather a sharded model's state_dict and pass it as
        state_dict=."""
        if distributed_checkpoint:
            raise NotImplementedError("save_pretrained(distributed_checkpoint=True) is not supported by gpt_fast: "
                                      "pass a sharded model's gathered state_dict= on one rank")
        if not is_main_process:
            return Path(save_directory)
        if push_to_hub and token is not None:
            hub_kwargs["token"] = token
        return hub_upload.save_then_push(
            lambda: self.write_checkpoint(save_directory, state_dict, max_shard_size, variant), save_directory,
            push_to_hub, "model", hub_kwargs)

    def write_checkpoint(self, save_directory, state_dict: dict | None, max_shard_size, variant) -> Path:
        """The files of save_pretrained (a head with a generation config adds generation_config.json)."""
        return checkpoint.save_pretrained(self, save_directory, state_dict, max_shard_size, variant)

    @classmethod
    def from_transformers(cls, hf_model: nn.Module, attn_implementation: str | None = None):
        """Converts a live transformers OpenAIGPT* model (same weights, dtype and device)."""
        return checkpoint.from_transformers(cls, hf_model, attn_implementation)
