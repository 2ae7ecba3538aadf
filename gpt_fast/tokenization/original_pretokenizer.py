"""The original GPT-1 pre-tokenisation: ftfy repair, text standardisation, then spaCy's English rules.

OpenAI's GPT-1 release (finetune-transformer-lm) split text this way before BPE; transformers replaced it with
BERT's basic tokenizer, and that is the default here too. This module is the opt-in alternative
(`OpenAIGPTTokenizerFast(..., use_original_pretokenization=True)`). It needs `pip install ftfy spacy`; spaCy's
rule-based tokenizer comes from `spacy.blank("en")`, so no spaCy model has to be downloaded.

Per text: ftfy.fix_text (mojibake, curly quotes -> straight), `standardize` below, spaCy tokenisation, each token
lower-cased. Differences from BERT mode: accents are kept ("café" stays "café"), contractions split the English
way ("don't" -> "do", "n't"), and a newline becomes its own word, which the vocabulary holds as "\\n</w>".
Whitespace-only spaCy tokens (spaCy keeps runs of spaces as tokens) are dropped, except that one holding a newline
becomes "\\n": the standardisation surrounds every newline with spaces precisely so that it stands alone.
"""

from __future__ import annotations

import re

# Typographic characters the original code mapped to ASCII before splitting.
_ASCII_FOR = {"\u2014": "-", "\u2013": "-", "\u2015": "-", "\u2026": "...", "\u00b4": "'"}
_ASCII_PATTERN = re.compile("|".join(map(re.escape, _ASCII_FOR)))
# A run of one repeated punctuation character from this set is set apart with spaces ("!!!" stays one run).
_ISOLATED_RUN = re.compile(r"""([-~!";?+,()\\/*\[\]{}|_])\1*""")
_NEWLINE_WITH_SPACES = re.compile(r"\s*\n\s*")
_BLANKS_BUT_NEWLINE = re.compile(r"[^\S\n]+")

_INSTALL_HINT = "pip install ftfy spacy"


def standardize(text: str) -> str:
    """The original GPT-1 text clean-up: ASCII dashes and ellipses, spaced punctuation runs, one space between
    words, newlines as standalone " \\n " words, no leading or trailing whitespace."""
    text = _ASCII_PATTERN.sub(lambda match: _ASCII_FOR[match.group(0)], text)
    text = _ISOLATED_RUN.sub(lambda match: f" {match.group(0)} ", text)
    text = _NEWLINE_WITH_SPACES.sub(" \n ", text)
    text = _BLANKS_BUT_NEWLINE.sub(" ", text)
    return text.strip()


class OriginalPreTokenizer:
    """Splits text into lower-cased words the way the original GPT-1 code did (see the module docstring)."""

    def __init__(self) -> None:
        try:
            import ftfy
            import spacy
        except ImportError as error:
            raise ImportError(
                "use_original_pretokenization=True needs the ftfy and spacy packages "
                f"(`{_INSTALL_HINT}`, or `pip install gpt_fast[original-tokenizer]`); "
                f"could not import {error.name or 'them'}"
            ) from error
        self._fix_text = ftfy.fix_text
        self._spacy_tokenizer = spacy.blank("en").tokenizer  # rule-based English splitting, no model download

    def split(self, text: str) -> list[str]:
        """The words of `text`, lower-cased, newline words as "\\n", ready for BPE."""
        words = []
        for token in self._spacy_tokenizer(standardize(self._fix_text(text))):
            word = token.text.strip()
            if word:
                words.append(word.lower())
            elif "\n" in token.text:
                words.append("\n")
        return words
