"""pipeline("text-generation", ...): transformers' text-generation pipeline, on gpt_fast's model and generate();
pipeline("feature-extraction", ...) builds feature_extraction.py's.

    generator = gpt_fast.pipeline("text-generation", model="path/to/openai-gpt")
    generator("The future of AI is", max_length=50, do_sample=True)  # -> [{"generated_text": "..."}]

As transformers 5.x's pipeline: a string gives a list of dicts (one per returned sequence), a list of strings a
list of such lists; generation arguments given to pipeline() apply to every call, a call's own over them (a call
passing generation_config= does not take pipeline()'s); for what neither these nor model.generation_config set the
pipeline's defaults apply: max_new_tokens=256 (not when max_length is set), do_sample=True, temperature=0.7 (only
when sampling) and the tokenizer's pad_token_id; `task_specific_params` are not read (transformers 5.x reads them
no more); the generated text is the prompt followed by the decoded new tokens, joined as they are (no space added);
`return_full_text=False` gives only the new text; prompts are generated one at a time (batch_size=1).
"""

from __future__ import annotations

import os

import torch

from gpt_fast.checkpoints.loading_options import device_from_map, hub_options
from gpt_fast.generation.feature_extraction import TASK as FEATURES
from gpt_fast.generation.feature_extraction import FeatureExtractionPipeline
from gpt_fast.generation.generate import generate
from gpt_fast.models.heads import OpenAIGPTLMHeadModel
from gpt_fast.models.modeling import OpenAIGPTModel
from gpt_fast.models.pretrained import OpenAIGPTPreTrainedModel
from gpt_fast.names import dtype_argument, parse_device, parse_dtype
from gpt_fast.tokenization.tokenizer import OpenAIGPTTokenizerFast

TASK = "text-generation"
PIPELINE_DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}  # transformers 5.x's
SAMPLING_PARAMS = ("temperature", "top_k", "top_p")  # pipeline defaults for these apply only when sampling
CALL_OPTIONS = ("return_full_text", "return_text", "return_tensors", "clean_up_tokenization_spaces")


def load_tokenizer(name_or_path, **options):
    return OpenAIGPTTokenizerFast.from_pretrained(name_or_path, **options)


def pipeline(task: str, model=None, tokenizer=None, *, dtype=None, torch_dtype=None, device=None, device_map=None,
             attn_implementation: str | None = None, model_kwargs: dict | None = None, revision: str | None = None,
             token=None, trust_remote_code: bool = False, use_fast: bool = True, framework: str | None = None,
             **task_defaults):
    """Builds a TextGenerationPipeline ("text-generation": task_defaults are generation arguments) or a
    FeatureExtractionPipeline ("feature-extraction": task_defaults may hold tokenize_kwargs). model: a folder / hub
    name or a model object (an OpenAIGPTLMHeadModel for text generation; any gpt_fast model for features, whose
    folder loads as OpenAIGPTModel, transformers' AutoModel for the task); tokenizer: a folder, a tokenizer
    object, or None to load it from the model's folder. device: an index (-1 = CPU), a string or a torch.device;
    dtype (or torch_dtype): a torch dtype or its name, or "auto". As transformers' pipeline: device_map (one
    device, checkpoints/loading_options.py), model_kwargs (more from_pretrained arguments), revision and token
    (for a hub name, model and tokenizer), trust_remote_code and use_fast (no effect), framework ("pt" only)."""
    if task not in (TASK, FEATURES):
        raise ValueError(f"gpt_fast.pipeline supports the {TASK!r} and {FEATURES!r} tasks, got {task!r}")
    if framework not in (None, "pt"):
        raise ValueError(f"gpt_fast.pipeline runs PyTorch models only: framework must be 'pt', got {framework!r}")
    hub = hub_options({"revision": revision, "token": token})
    loading = {"device_map": device_map, **hub, **(model_kwargs or {})}
    generating = task == TASK
    model, tokenizer = _model_and_tokenizer(model, tokenizer, OpenAIGPTLMHeadModel if generating else OpenAIGPTModel,
                                            OpenAIGPTLMHeadModel if generating else OpenAIGPTPreTrainedModel,
                                            dtype, torch_dtype, device, attn_implementation, loading, hub)
    if generating:
        return TextGenerationPipeline(model.eval(), tokenizer, task_defaults)
    tokenize_kwargs = task_defaults.pop("tokenize_kwargs", None)
    if task_defaults:
        raise TypeError(f"pipeline({FEATURES!r}) got unexpected arguments {sorted(task_defaults)}; it takes "
                        "tokenize_kwargs")
    return FeatureExtractionPipeline(model.eval(), tokenizer, tokenize_kwargs)


def _model_and_tokenizer(model, tokenizer, folder_class, accepted, dtype, torch_dtype, device, attn_implementation,
                         loading: dict, tokenizer_loading: dict):
    """(the model, in dtype on device, the tokenizer object) from pipeline()'s arguments; loading: the model's
    other from_pretrained arguments (device_map among them), tokenizer_loading the tokenizer's."""
    if model is None:
        raise ValueError("pass model= (a checkpoint folder or a model object); there is no default model")
    dtype = parse_dtype(dtype_argument(dtype, torch_dtype))
    device = device_from_map(loading.pop("device_map"), device)
    target = None if device is None else parse_device(device)
    if isinstance(model, (str, os.PathLike)):
        folder = model
        model = folder_class.from_pretrained(folder, dtype=dtype, device=target,
                                             attn_implementation=attn_implementation, **loading)
        if tokenizer is None:
            tokenizer = folder
    elif isinstance(model, accepted):
        if isinstance(dtype, torch.dtype) or target is not None:
            model = model.to(device=target, dtype=dtype if isinstance(dtype, torch.dtype) else None)
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
    else:
        raise TypeError(f"model must be a folder path or an {accepted.__name__}, got {type(model).__name__}")
    if tokenizer is None:
        raise ValueError("pass tokenizer= (a folder or a tokenizer object) when model is a model object")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer, **tokenizer_loading)
    if not (callable(tokenizer) and callable(getattr(tokenizer, "decode", None))):
        raise TypeError(f"tokenizer must be callable and have decode(), got {type(tokenizer).__name__}")
    return model, tokenizer


class TextGenerationPipeline:
    task = TASK

    def __init__(self, model, tokenizer, generate_defaults: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = dict(generate_defaults or {})  # pipeline()'s generation arguments

    def generate_kwargs(self, call_kwargs: dict) -> dict:
        """One call's generate() arguments, as transformers 5.x's pipeline makes them."""
        kwargs = dict(call_kwargs) if "generation_config" in call_kwargs else {**self.defaults, **call_kwargs}
        config = kwargs.get("generation_config")
        set_params = {**self.model.generation_config.generate_kwargs(),
                      **(config.generate_kwargs() if config is not None else {}), **kwargs}
        added = {k: v for k, v in PIPELINE_DEFAULTS.items()
                 if k not in set_params and not (k == "max_new_tokens" and "max_length" in set_params)}
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is not None and "pad_token_id" not in set_params:
            added["pad_token_id"] = pad
        if not {**set_params, **added}.get("do_sample"):
            added = {k: v for k, v in added.items() if k not in SAMPLING_PARAMS}
        return {**kwargs, **added}

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, text_inputs, *, return_full_text: bool = True, return_text: bool = True,
                 return_tensors: bool = False, clean_up_tokenization_spaces: bool | None = None, **generate_kwargs):
        single = isinstance(text_inputs, str)
        prompts = [text_inputs] if single else text_inputs
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"text_inputs must be a string or a list of strings, got {type(text_inputs).__name__}")
        for name, value in (("return_full_text", return_full_text), ("return_text", return_text),
                            ("return_tensors", return_tensors)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        kwargs = self.generate_kwargs(generate_kwargs)
        results = [self._one(p, kwargs, return_full_text, return_text, return_tensors, clean_up_tokenization_spaces)
                   for p in prompts]
        return results[0] if single else results

    def _one(self, prompt: str, kwargs: dict, full_text: bool, return_text: bool, return_tensors: bool, clean_up):
        input_ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]  # (1, T)
        if input_ids.shape[-1] == 0:
            raise ValueError(f"the prompt {prompt!r} is empty after tokenization")
        sequences = generate(self.model, input_ids, **kwargs).cpu()  # (n, T + new)
        decode = dict(skip_special_tokens=True)
        if clean_up is not None:
            decode["clean_up_tokenization_spaces"] = clean_up
        records = []
        for sequence in sequences:
            record = {}
            if return_tensors:
                kept = sequence if full_text else sequence[input_ids.shape[-1]:]
                record["generated_token_ids"] = kept.tolist()
            if return_text:
                new_text = self.tokenizer.decode(sequence[input_ids.shape[-1]:].tolist(), **decode)
                record["generated_text"] = prompt + new_text if full_text else new_text
            records.append(record)
        return records
