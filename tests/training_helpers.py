"""What the training tests share: a tiny model config, a .bin corpus with structure to learn, a config maker."""

from __future__ import annotations

import numpy as np

from gpt_fast.training import TrainingConfig

TINY_MODEL = dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, initializer_range=0.1,
                  resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0)  # no dropout unless a test asks


def write_bin(path, tokens: int = 600, seed: int = 0):
    """uint16 ids: a repeating pattern with some noise, so the loss falls within a few steps."""
    rng = np.random.default_rng(seed)
    ids = (np.arange(tokens) * 7 % 50).astype(np.uint16)
    noise = rng.random(tokens) < 0.2
    ids[noise] = rng.integers(0, 50, noise.sum())
    ids.tofile(path)
    return path


def tiny_config(data, out, **overrides) -> TrainingConfig:
    settings = dict(train_data=[str(data)], output_dir=str(out), model_config=dict(TINY_MODEL), seq_len=8,
                    batch_size=4, max_steps=6, learning_rate=1e-2, warmup_steps=2, progress=False,
                    attn_implementation="sdpa")
    return TrainingConfig(**{**settings, **overrides})
