"""Patching transformers' OpenAIGPT models with gpt_fast's kernels (apply.py); the layer forwards (forwards.py),
generate (generate.py) and the saved originals (originals.py)."""

from gpt_fast.patching.apply import apply_gpt_fast_kernels, revert_gpt_fast_kernels

__all__ = ["apply_gpt_fast_kernels", "revert_gpt_fast_kernels"]
