"""A deterministic word-level corpus with real structure for the quantization accuracy test: sentences from a small
grammar with number agreement (subject and verb), adjectives, prepositional phrases, sums of small numbers with
their result ("3 plus 4 is 7 ."), counting runs ("5 6 7 8 ."), and one fixed refrain. A model learns the
deterministic parts (agreement, arithmetic, counting) to near certainty and the free choices to their
frequencies, so its next-token distributions mix sharp and flat ones, as a language model's do. Generated from a
seeded random.Random: the same tokens on every machine and Python version."""

from __future__ import annotations

import random

import torch

NOUNS = ["cat", "dog", "bird", "child", "teacher", "farmer", "robot", "river", "tree", "engineer"]
PLURALS = ["cats", "dogs", "birds", "children", "teachers", "farmers", "robots", "rivers", "trees", "engineers"]
VERBS = ["sees", "likes", "follows", "helps", "finds", "watches"]
VERBS_PLURAL = ["see", "like", "follow", "help", "find", "watch"]
ADJECTIVES = ["old", "young", "small", "quiet", "bright", "green"]
PREPOSITIONS = ["near", "under", "behind", "with"]
DETERMINERS = ["the", "a", "every", "my"]
NUMBERS = [str(n) for n in range(41)]
OTHER = ["plus", "is", ".", "and", "then", "sleeps", "sleep", "end", "of", "story", "<eos>"]
VOCAB = sorted(set(NOUNS + PLURALS + VERBS + VERBS_PLURAL + ADJECTIVES + PREPOSITIONS + DETERMINERS + NUMBERS
                   + OTHER))
INDEX = {word: i for i, word in enumerate(VOCAB)}


def _noun_phrase(rng: random.Random, plural: bool) -> list[str]:
    words = ["the"] if plural else [rng.choice(DETERMINERS)]
    if rng.random() < 0.4:
        words.append(rng.choice(ADJECTIVES))
    words.append(rng.choice(PLURALS if plural else NOUNS))
    if rng.random() < 0.25:
        words += [rng.choice(PREPOSITIONS)] + _noun_phrase(rng, rng.random() < 0.5)
    return words


def _sentence(rng: random.Random) -> list[str]:
    kind = rng.random()
    if kind < 0.15:
        a, b = rng.randrange(21), rng.randrange(20)
        return [str(a), "plus", str(b), "is", str(a + b), "."]
    if kind < 0.25:
        start = rng.randrange(30)
        return [str(n) for n in range(start, start + rng.randrange(3, 8)) if n <= 40] + ["."]
    if kind < 0.3:
        return ["end", "of", "story", ".", "<eos>"]
    plural = rng.random() < 0.5
    subject = _noun_phrase(rng, plural)
    if rng.random() < 0.2:
        verb_phrase = ["sleep" if plural else "sleeps"]
    else:
        verb_phrase = [rng.choice(VERBS_PLURAL if plural else VERBS)] + _noun_phrase(rng, rng.random() < 0.5)
    tail = ["and", "then", "sleep" if plural else "sleeps"] if rng.random() < 0.15 else []
    return subject + verb_phrase + tail + ["."]


def corpus(tokens: int, seed: int) -> torch.Tensor:
    """`tokens` token ids (1-D long tensor) of running text drawn with `seed`."""
    rng = random.Random(seed)
    ids: list[int] = []
    while len(ids) < tokens:
        ids += [INDEX[word] for word in _sentence(rng)]
    return torch.tensor(ids[:tokens], dtype=torch.long)
