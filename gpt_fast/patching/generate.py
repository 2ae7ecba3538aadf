"""gpt_fast's generate() for a patched transformers OpenAIGPTLMHeadModel.

The request runs on a gpt_fast OpenAIGPTLMHeadModel built around the transformers model's own Parameter objects
(no copy: training, in-place updates and .to() are seen by both; it is rebuilt when a parameter is replaced, e.g. by
resize_token_embeddings) and kept in the transformers model's __dict__ under SHARED_MODEL (outside its modules and
state_dict). transformers' arguments are taken as transformers takes them: `inputs` or `input_ids`,
`attention_mask`, a transformers (or gpt_fast) `generation_config=` and the model's own `generation_config`.

transformers' own generate runs instead (over the patched layers, so still on gpt_fast's kernels) when gpt_fast's
could not honour the call: the model holds anything but transformers' own layers, unhooked (a PEFT wrapper's
LoRA layers, hooks: the shared model would skip them), or an argument or generation-config field gpt_fast's
generate does not take (guidance_scale, assistant_tokenizer, ...) or a value it refuses (synced_gpus=True, a
quantized cache_implementation). A transformers `assistant_model` runs as its own shared gpt_fast model.
"""

from __future__ import annotations

import torch
from torch import nn

from gpt_fast.generation.arguments import GENERATE_KWARGS, refusal
from gpt_fast.generation.config import IGNORED, NOT_GENERATE_ARGS, GenerationConfig
from gpt_fast.generation.generate import generate
from gpt_fast.models.configuration import OpenAIGPTConfig
from gpt_fast.models.heads import OpenAIGPTLMHeadModel
from gpt_fast.models.hooks import hooked
from gpt_fast.patching.originals import modeling_openai, original, patch

SHARED_MODEL = "_gpt_fast_shared_model"  # the key of the shared gpt_fast model in a transformers model's __dict__


def _plain_model(hf_model) -> bool:
    """Every module is one of transformers' OpenAIGPT LM-head layers or a torch layer it uses, with no hooks."""
    hf = modeling_openai()
    allowed = (hf.OpenAIGPTLMHeadModel, hf.OpenAIGPTModel, hf.Block, hf.Attention, hf.MLP, hf.Conv1D, nn.Embedding,
               nn.Dropout, nn.ModuleList, nn.LayerNorm, nn.Linear, type(hf.ACT_FNS[hf_model.config.afn]))
    return all(type(module) in allowed and not hooked(module) for module in hf_model.modules())


def _build_shared(hf_model) -> OpenAIGPTLMHeadModel:
    with torch.device("meta"):
        shared = OpenAIGPTLMHeadModel(OpenAIGPTConfig.from_dict(hf_model.config.to_dict()))
    for name, _ in list(shared.named_parameters(remove_duplicate=False)):
        owner, _, leaf = name.rpartition(".")
        shared.get_submodule(owner)._parameters[leaf] = hf_model.get_parameter(name)
    shared.transformer.position_ids = torch.arange(shared.config.n_positions, device=shared.device)
    return shared.train(hf_model.training)


def _still_shared(shared: OpenAIGPTLMHeadModel, hf_model) -> bool:
    if shared.transformer.position_ids.device != shared.device:
        return False
    return all(param is hf_model.get_parameter(name)
               for name, param in shared.named_parameters(remove_duplicate=False))


def shared_model(hf_model) -> OpenAIGPTLMHeadModel | None:
    """The gpt_fast model over hf_model's parameters (made or refreshed as needed), None if hf_model is not plain."""
    if not _plain_model(hf_model):
        return None
    shared = hf_model.__dict__.get(SHARED_MODEL)
    if shared is None or not _still_shared(shared, hf_model):
        shared = hf_model.__dict__[SHARED_MODEL] = _build_shared(hf_model)
    return shared


def _config_fields(config) -> dict | None:
    """A transformers or gpt_fast GenerationConfig's set fields as generate() arguments."""
    if config is None:
        return {}
    if isinstance(config, GenerationConfig):
        return config.generate_kwargs()
    to_diff_dict = getattr(config, "to_diff_dict", None)
    if to_diff_dict is None:
        raise TypeError(f"generation_config must be a GenerationConfig, got {type(config).__name__}")
    return {k: v for k, v in to_diff_dict().items() if k not in IGNORED and k not in NOT_GENERATE_ARGS}


def gpt_fast_arguments(hf_model, inputs, generation_config, kwargs: dict) -> dict | None:
    """transformers' generate arguments as gpt_fast's generate() keyword arguments (kwargs over generation_config's
    fields over the model's), or None when gpt_fast's generate does not take one of them."""
    arguments = {**_config_fields(getattr(hf_model, "generation_config", None)), **_config_fields(generation_config),
                 **kwargs}
    if inputs is not None:
        if "input_ids" in arguments:
            raise ValueError("pass the prompt as inputs or input_ids, not both")
        arguments["input_ids"] = inputs
    taken = set(GENERATE_KWARGS) | {"input_ids", "attention_mask"}
    return arguments if set(arguments) <= taken and refusal(arguments.get) is None else None


@patch
def lm_generate(self, inputs=None, generation_config=None, **kwargs):
    """transformers' OpenAIGPTLMHeadModel.generate, run by gpt_fast's generate over the static KV cache (see the
    module docstring for when transformers' own runs instead)."""
    arguments = gpt_fast_arguments(self, inputs, generation_config, kwargs)
    shared = shared_model(self) if arguments is not None else None
    assistant = arguments.get("assistant_model") if shared is not None else None
    if isinstance(assistant, modeling_openai().OpenAIGPTLMHeadModel):  # a transformers assistant: its shared model
        arguments["assistant_model"] = shared_model(assistant)
        shared = shared if arguments["assistant_model"] is not None else None
    if shared is None:
        return original(self, "generate")(inputs, generation_config, **kwargs)
    return generate(shared, **arguments)


def drop_shared_model(hf_model) -> None:
    hf_model.__dict__.pop(SHARED_MODEL, None)
