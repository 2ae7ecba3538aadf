"""Prompt prefix caching for the serving engine (`gpt-fast serve --prefix-cache-size N`): requests whose prompts
start alike (a system prompt, few-shot examples, a document asked several questions) skip the prefill of what an
earlier prompt already computed.

When a sequence's prompt has been prefilled, its keys and values (every layer, positions [0, L)) are copied out of
its cache slot into an entry keyed by the prompt's tokens, and again when it finishes, then for the prompt and the
tokens it generated (all but the last, which was never fed): a chat's next turn repeats them. Nothing is copied
when a cached entry already starts with those tokens, and entries that they extend are dropped (the new one holds
them). When a new sequence begins prefilling, the entry sharing the
longest prefix with its prompt (at least MIN_TOKENS tokens, and never the last prompt token, whose logits are
needed) is copied into its slot, and its chunked prefill starts after that prefix, attending over it
(prefill.prefill_chunk). The keys and values of a position depend only on the tokens up to it, so the result is
the one a full prefill gives, up to the rounding of the passes that computed them (other row counts can take other
kernels). Entries are evicted least recently used first; each holds 2 x n_layer x L x n_embd values in the model's
dtype (GPT-1, a 512-token prompt: 18.9 MB in bf16). Requests that ask for their prompt's log-probabilities are
prefilled whole (they need every position's logits) but still stored.
"""

from __future__ import annotations

from collections import OrderedDict

from gpt_fast.serving.slots import SlotCache

MIN_TOKENS = 16  # shorter shared prefixes are not worth an entry or a copy


def common_prefix(a: tuple, b: tuple, limit: int) -> int:
    """The length of the longest common prefix of a and b, at most limit (slice comparisons: C speed)."""
    n = min(len(a), len(b), limit)
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class PrefixCache:
    def __init__(self, slots: SlotCache, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"prefix_cache_size must be an int >= 1 (entries), got {capacity!r}")
        self.slots = slots
        self.capacity = capacity
        self.entries: OrderedDict[tuple, list] = OrderedDict()  # prompt -> [(k, v) (H, L, D) per layer], LRU first

    def restore(self, slot: int, prompt: list[int]) -> int:
        """Copies the longest cached prefix of `prompt` (MIN_TOKENS to len(prompt) - 1 tokens) into the slot's cache
        row and returns its length, or 0 when no entry shares that much."""
        tokens = tuple(prompt)
        best, length = None, 0
        for key in self.entries:
            shared = common_prefix(key, tokens, len(tokens) - 1)
            if shared > length:
                best, length = key, shared
        if length < MIN_TOKENS:
            return 0
        self.entries.move_to_end(best)
        for (k_cache, v_cache), (keys, values) in zip(self.slots.layers, self.entries[best]):  # (B, H, Tmax, D)
            k_cache[slot, :, :length].copy_(keys[:, :length])
            v_cache[slot, :, :length].copy_(values[:, :length])
        self.slots.lengths[slot] = length
        return length

    def store(self, slot: int, prompt: list[int]) -> None:
        """Keeps the prompt's keys and values from the slot's cache row (its prefill done)."""
        tokens = tuple(prompt)
        if len(tokens) < MIN_TOKENS:
            return
        for key in self.entries:
            if key[:len(tokens)] == tokens:  # a cached prompt already holds this one
                self.entries.move_to_end(key)
                return
        for key in [k for k in self.entries if tokens[:len(k)] == k]:  # prompts this one extends
            del self.entries[key]
        L = len(tokens)
        self.entries[tokens] = [(k[slot, :, :L].clone(), v[slot, :, :L].clone()) for k, v in self.slots.layers]
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
