"""Incremental detokenization with stop strings: the text of a sequence's generated tokens, handed out as deltas.

Each new token re-decodes the generated ids (GPT-1's BPE decodes a prefix of the ids to a prefix of the text: a
word's space comes with the token after it) and hands out only text that cannot still turn into a stop string: the
last len(longest stop) - 1 characters are held back until the next token or the end. A stop string ends the text
just before it (the stop string is not returned), as OpenAI does.
"""

from __future__ import annotations


class IncrementalText:
    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1  # characters a stop string could still claim
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters handed out so far

    def add(self, token: int) -> tuple[str, bool]:
        """Appends a token; returns (the text that is now safe to hand out, whether a stop string was met). Without a
        tokenizer (generate_batch: token ids only) there is no text."""
        self.ids.append(token)
        if self.tokenizer is None:
            return "", False
        before = len(self.text)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        stopped = False
        if self.stop:
            start = max(0, before - self.hold)  # an earlier stop string would have been found already
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text, stopped = self.text[:min(hits)], True
        safe = len(self.text) if stopped else len(self.text) - self.hold
        return self.take(safe), stopped

    def flush(self) -> str:
        """The held-back rest, at the end of the sequence."""
        return self.take(len(self.text))

    def take(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta = self.text[self.sent:upto]
        self.sent = upto
        return delta
