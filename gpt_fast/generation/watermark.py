"""generate(watermarking_config=...): transformers' WatermarkLogitsProcessor (Kirchenbauer et al. 2023), the same
green lists and so the same tokens, so transformers' WatermarkDetector recognises gpt_fast's text.

For each row a seed is made from the sequence so far (transformers' view: the prompt as passed, padding included,
then the new tokens): "lefthash", hashing_key times the last token; "selfhash", the minimum over the last
context_width tokens (and each candidate token) of hashing_key times two entries of a fixed random table. A
generator seeded with it draws a permutation of the vocabulary whose first greenlist_ratio share is the green list,
and bias is added to those scores. It runs after the sampling filters, before renormalize_logits, as in
transformers. The seed is read on the host, row by row (a sync per step): watermarking is transformers' Python loop.
"""

from __future__ import annotations

import torch

FIELDS = {"greenlist_ratio": 0.25, "bias": 2.0, "hashing_key": 15485863, "seeding_scheme": "lefthash",
          "context_width": 1}  # transformers' WatermarkingConfig defaults
TABLE_SIZE = 1_000_003
CANDIDATES = 40  # selfhash: the best-scored tokens tried as the current token, as transformers (and the paper's code)


def watermark_settings(value) -> dict | None:
    """The fields of a watermarking_config (a dict, or transformers' WatermarkingConfig: anything with to_dict()),
    checked, with transformers' defaults for the missing ones."""
    if value is None:
        return None
    if not isinstance(value, dict) and callable(getattr(value, "to_dict", None)):
        value = value.to_dict()
    if not isinstance(value, dict):
        raise TypeError(f"watermarking_config must be a dict or transformers' WatermarkingConfig, got {value!r}")
    unknown = sorted(set(value) - set(FIELDS) - {"transformers_version"})
    if unknown:
        raise ValueError(f"watermarking_config: unknown fields {unknown}; it takes {sorted(FIELDS)}")
    settings = {name: value.get(name, default) for name, default in FIELDS.items()}
    if settings["seeding_scheme"] not in ("lefthash", "selfhash"):
        raise ValueError(f"watermarking_config.seeding_scheme must be 'lefthash' or 'selfhash', got "
                         f"{settings['seeding_scheme']!r}")
    ratio = settings["greenlist_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
        raise ValueError(f"watermarking_config.greenlist_ratio must lie in (0, 1), got {ratio!r}")
    for name, low in (("context_width", 1), ("hashing_key", 0)):
        number = settings[name]
        if isinstance(number, bool) or not isinstance(number, int) or number < low:
            raise ValueError(f"watermarking_config.{name} must be an int >= {low}, got {number!r}")
    if isinstance(settings["bias"], bool) or not isinstance(settings["bias"], (int, float)):
        raise ValueError(f"watermarking_config.bias must be a number, got {settings['bias']!r}")
    return settings


class Watermark:
    """The processor for one request: scores (R, V) and the sequences so far (R, L) -> scores with bias added to
    each row's green list."""

    def __init__(self, settings: dict, vocab_size: int, device: torch.device):
        self.vocab_size = vocab_size
        self.green = int(vocab_size * settings["greenlist_ratio"])
        self.bias = settings["bias"]
        self.key = settings["hashing_key"]
        self.selfhash = settings["seeding_scheme"] == "selfhash"
        self.width = settings["context_width"]
        self.rng = torch.Generator(device=device)
        self.rng.manual_seed(self.key)
        self.table = torch.randperm(TABLE_SIZE, generator=self.rng, device=device)  # selfhash's fixed table

    def _green_list(self, sequence: torch.Tensor) -> torch.Tensor:
        context = sequence[-self.width:]
        if self.selfhash:
            a = self.table[context % TABLE_SIZE] + 1
            b = self.table[context[-1] % TABLE_SIZE] + 1
            seed = int((self.key * a * b).min())
        else:
            seed = self.key * int(context[-1])
        self.rng.manual_seed(seed % (2**64 - 1))
        return torch.randperm(self.vocab_size, device=sequence.device, generator=self.rng)[:self.green]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] < self.width:
            return scores  # too short to seed: transformers skips the step (with a warning)
        out = scores.clone()
        for row, sequence in enumerate(input_ids):
            if self.selfhash:
                candidates = scores[row].argsort(descending=True)[:CANDIDATES]
                green = [token for token in candidates
                         if token in self._green_list(torch.cat([sequence, token[None]]))]
                green = torch.stack(green) if green else torch.empty(0, dtype=torch.long, device=scores.device)
            else:
                green = self._green_list(sequence)
            out[row, green] += self.bias
        return out
