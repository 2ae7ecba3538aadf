"""The one place that holds what patching replaced, and how to call it.

apply_gpt_fast_kernels() swaps methods of transformers' OpenAIGPT classes (or of single instances) for gpt_fast's.
`SAVED_CLASS_ATTRIBUTES` keeps each class attribute as it was before a class was patched (MISSING when the class
inherited it), so that revert restores it exactly and a patched method can still run the original (its fallback).
An instance patch needs nothing saved: it is an entry in the instance's __dict__, removed on revert.
transformers is an optional dependency: it is imported on the first patch, not when gpt_fast is imported.
"""

from __future__ import annotations

MISSING = object()
PATCH_MARK = "__gpt_fast_patch__"

# (class, attribute name) -> the class's own attribute before patching, or MISSING
SAVED_CLASS_ATTRIBUTES: dict[tuple[type, str], object] = {}


def patch(function):
    """Marks a function as one of gpt_fast's replacements (so that it is never taken for an original)."""
    setattr(function, PATCH_MARK, True)
    return function


def is_patch(value) -> bool:
    return getattr(getattr(value, "__func__", value), PATCH_MARK, False)


def modeling_openai():
    """transformers' OpenAIGPT module (imported here, on first use: transformers is optional for gpt_fast)."""
    try:
        from transformers.models.openai import modeling_openai
    except ImportError as error:
        raise ImportError("apply_gpt_fast_kernels patches transformers' OpenAIGPT models: install transformers "
                          f"({error})") from error
    return modeling_openai


def original(obj, name: str):
    """obj's `name` as transformers defines it, bound to obj: the first class in obj's MRO that defines it, with
    a patched class attribute replaced by the one it replaced."""
    for klass in type(obj).__mro__:
        value = klass.__dict__.get(name, MISSING)
        if value is not MISSING and is_patch(value):
            value = SAVED_CLASS_ATTRIBUTES.get((klass, name), MISSING)
        if value is not MISSING:
            return value.__get__(obj, type(obj))
    raise AttributeError(f"{type(obj).__name__} has no original {name!r}")


def patch_class(klass: type, name: str, function) -> None:
    """klass.name = function, saving what was there first (once: patching twice changes nothing)."""
    current = klass.__dict__.get(name, MISSING)
    if is_patch(current):
        return
    SAVED_CLASS_ATTRIBUTES[(klass, name)] = current
    setattr(klass, name, function)


def revert_class(klass: type, name: str) -> None:
    """Puts back what patch_class replaced (an inherited attribute by deleting the class's own)."""
    if (klass, name) not in SAVED_CLASS_ATTRIBUTES:
        return
    saved = SAVED_CLASS_ATTRIBUTES.pop((klass, name))
    if saved is MISSING:
        delattr(klass, name)
    else:
        setattr(klass, name, saved)
