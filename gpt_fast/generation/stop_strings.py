"""stop_strings: stop a row once its text ends in one of the strings, with transformers' StopStringCriteria's
matches (generate(..., stop_strings=, tokenizer=)).

transformers' rule, kept exactly: each token stands for the text it decodes to after a fixed prefix ("abcdef"),
so that word-boundary markers become the spaces they make (GPT-1's "dog</w>" reads " dog"); a row matches when
the text of its last `window` tokens (window = the longest stop string's length, tokens included whatever they
are: prompt, padding) holds a stop string that ends inside the last token (a string ending earlier, or
completely inside earlier tokens, does not count: it was matched at its own step). transformers does this with
tensor lookups so that it compiles; here it is the plain string test it stands for, run on the host (one read of
the last `window` tokens per step). Tokenizers that decode bytes (byte-level, byte-fallback) are refused.
"""

from __future__ import annotations

import torch

STATIC_PREFIX = "abcdef"  # transformers' StopStringCriteria.clean_tokenizer_vocab prefix


def _token_texts(tokenizer) -> dict[int, str]:
    """Each token id's text as transformers' clean_tokenizer_vocab computes it."""
    base = tokenizer.convert_ids_to_tokens(tokenizer(STATIC_PREFIX, add_special_tokens=False)["input_ids"])
    texts = {}
    for token, index in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string(base + [token])
        texts[index] = text[text.index(STATIC_PREFIX) + len(STATIC_PREFIX):]
    return texts


def _decodes_bytes(tokenizer) -> bool:
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    state = getattr(decoder, "__getstate__", lambda: "")()
    state = state.decode(errors="replace") if isinstance(state, bytes) else str(state)
    return type(decoder).__name__ == "ByteLevel" or "ByteLevel" in state or "ByteFallback" in state


class StopStringCriteria:
    """criteria(input_ids (R, L), scores) -> (R,) bool: the rows whose text now ends in a stop string."""

    def __init__(self, tokenizer, stop_strings):
        strings = [stop_strings] if isinstance(stop_strings, str) else stop_strings
        if not isinstance(strings, (list, tuple)) or not strings or not all(isinstance(s, str) for s in strings):
            raise TypeError(f"stop_strings must be a string or a non-empty list of strings, got {stop_strings!r}")
        if not all(strings):
            raise ValueError("stop_strings must not hold an empty string")
        if tokenizer is None:
            raise ValueError("stop_strings need the tokenizer: pass tokenizer= to generate (as transformers asks)")
        if not all(callable(getattr(tokenizer, name, None))
                   for name in ("get_vocab", "convert_ids_to_tokens", "convert_tokens_to_string")):
            raise TypeError(f"tokenizer must be a tokenizer (get_vocab, convert_ids_to_tokens, "
                            f"convert_tokens_to_string), got {type(tokenizer).__name__}")
        if _decodes_bytes(tokenizer):
            raise ValueError("stop_strings: tokenizers that decode bytes (byte-level, byte-fallback) are not "
                             "supported; GPT-1's tokenizer decodes text")
        self.stop_strings = tuple(strings)
        self.window = max(len(s) for s in strings)
        self.texts = _token_texts(tokenizer)
        if not any(s[-1] in text for s in strings for text in self.texts.values()):  # transformers raises too
            raise ValueError(f"no token of the tokenizer can end any of the stop strings {list(strings)} (they hold "
                             "characters that are not in its vocabulary)")

    def _stops(self, ids: list[int]) -> bool:
        pieces = []
        for index in reversed(ids):  # an id the vocabulary lacks ends the text (transformers: it matches nothing)
            text = self.texts.get(index)
            if text is None:
                break
            pieces.append(text)
        if len(pieces) == 0:
            return False
        text, last = "".join(reversed(pieces)), len(pieces[0])
        # an occurrence that ends inside the last token starts after len(text) - last - len(s)
        return any(text.find(s, max(0, len(text) - last - len(s) + 1)) != -1 for s in self.stop_strings)

    def __call__(self, input_ids: torch.Tensor, scores=None) -> torch.Tensor:
        rows = input_ids[:, -self.window:].tolist()
        return torch.tensor([self._stops(row) for row in rows], dtype=torch.bool, device=input_ids.device)
