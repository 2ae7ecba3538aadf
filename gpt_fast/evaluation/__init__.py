"""Evaluating a model on held-out text: perplexity (perplexity.py, `gpt-fast eval`)."""

from gpt_fast.evaluation.perplexity import PerplexityResult, perplexity, windows

__all__ = ["PerplexityResult", "perplexity", "windows"]
