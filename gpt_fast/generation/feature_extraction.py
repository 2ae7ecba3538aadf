"""pipeline("feature-extraction", ...): transformers' feature-extraction pipeline on gpt_fast's models.

    extractor = gpt_fast.pipeline("feature-extraction", model="path/to/openai-gpt")
    extractor("hello world")                      # -> [[[...768 floats...], [...]]]: (1, T, C) as nested lists
    extractor(["a", "b c"], return_tensors=True)  # -> [tensor (1, 1, C), tensor (1, 2, C)]

As transformers 5.x's: each text is tokenized alone (`tokenize_kwargs`, or `truncation=`), the model's first
output is returned (a base model's last hidden state; a head's logits, as there), as nested lists or, with
return_tensors=True, a tensor, on the CPU. transformers' own pipeline cannot take a gpt_fast model for this task:
it moves outputs to the CPU through a plain dict and then indexes it by position (`outputs[0]`), which only its own
ModelOutput class answers.
"""

from __future__ import annotations

import torch

TASK = "feature-extraction"


class FeatureExtractionPipeline:
    task = TASK

    def __init__(self, model, tokenizer, tokenize_kwargs: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.tokenize_kwargs = dict(tokenize_kwargs or {})

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, inputs, *, return_tensors: bool = False, truncation: bool | None = None,
                 tokenize_kwargs: dict | None = None):
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"inputs must be a string or a list of strings, got {type(inputs).__name__}")
        if not isinstance(return_tensors, bool):
            raise TypeError(f"return_tensors must be True or False, got {return_tensors!r}")
        kwargs = {**self.tokenize_kwargs, **(tokenize_kwargs or {})}
        if truncation is not None:
            if "truncation" in kwargs and kwargs["truncation"] != truncation:
                raise ValueError("truncation given both as an argument and in tokenize_kwargs")
            kwargs["truncation"] = truncation
        results = [self._one(text, kwargs, return_tensors) for text in texts]
        return results[0] if single else results

    def _one(self, text: str, tokenize_kwargs: dict, return_tensors: bool):
        encoded = self.tokenizer(text, return_tensors="pt", **tokenize_kwargs)
        if encoded["input_ids"].shape[-1] == 0:
            raise ValueError(f"the text {text!r} is empty after tokenization")
        encoded = {name: value.to(self.device) for name, value in encoded.items()}
        with torch.inference_mode():
            first = self.model(**encoded, return_dict=False)[0].cpu()  # (1, T, C) or a head's first output
        return first if return_tensors else first.tolist()
