"""The training loop: `train(TrainingConfig) -> TrainResult`.

AdamW (fused where the device has the fused kernel), warmup + cosine schedule, gradient clipping, gradient
accumulation, bf16 autocast, the fused LM-head loss, periodic evaluation (loss and perplexity), resumable
checkpoints, a tqdm bar with tokens/s, a JSONL metrics log and the optional loss-curve PNG; DDP or FSDP2 when
torchrun starts several processes (gpt_fast/training/distributed.py, sharding.py).

The global batch of a step is batch_size rows x grad_accum micro-batches x the number of processes; each
micro-batch's rows are split between the processes in rank order, so the rows (and, without dropout, the loss
curve) do not depend on how many processes share the batch. Every row has seq_len targets, so the mean of the
micro-batch means (the gradient DDP averages) is the mean over the global batch.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gpt_fast.models.configuration import OpenAIGPTConfig
from gpt_fast.models.heads import OpenAIGPTLMHeadModel
from gpt_fast.names import parse_device
from gpt_fast.tokenization.tokenizer import OpenAIGPTTokenizerFast
from gpt_fast.training import allocator, distributed
from gpt_fast.training.config import TrainingConfig
from gpt_fast.training.data import TokenRows, data_files, load_tokens
from gpt_fast.training.metrics import METRICS, MetricsLog, plot_loss_curve
from gpt_fast.training.optimizer_in_backward import OptimizerInBackward
from gpt_fast.training.schedule import warmup_cosine_scheduler
from gpt_fast.training.sharding import describe, full_model_state, is_sharded, load_optimizer_state
from gpt_fast.training.state import latest_checkpoint, load_rng_state, load_trainer_state, save_checkpoint

DEFAULT_TOKENIZER = "openai-gpt"  # the packaged GPT-1 tokenizer


@dataclass
class TrainResult:
    output_dir: Path
    losses: dict[int, float] = field(default_factory=dict)  # optimizer step (1-based) -> mean training loss
    eval_losses: dict[int, float] = field(default_factory=dict)  # step -> evaluation loss
    last_checkpoint: Path | None = None
    main_process: bool = True  # False in the other processes of a torchrun job
    kept_freed_memory: bool = False  # whether this process keeps freed memory (gpt_fast/training/allocator.py)


def _needs_tokenizer(paths: list[str]) -> bool:
    return any(path.suffix != ".bin" for path in data_files(paths))


def _tokenizer(config: TrainingConfig, model_folder: str | None):
    paths = config.train_data + (config.eval_data or [])
    if not _needs_tokenizer(paths):
        return None
    name = config.tokenizer
    if name is None and model_folder is not None and any(
            (Path(model_folder) / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        name = model_folder
    return OpenAIGPTTokenizerFast.from_pretrained(name or DEFAULT_TOKENIZER)


def _model_config(source) -> OpenAIGPTConfig:
    """A dict of config fields, "gpt1" (GPT-1's defaults), a config.json or a folder holding one."""
    if isinstance(source, dict):
        return OpenAIGPTConfig(**source)
    if source == "gpt1":
        return OpenAIGPTConfig()
    path = Path(source)
    return OpenAIGPTConfig.from_pretrained(path) if path.is_dir() else OpenAIGPTConfig.from_json_file(path)


def build_model(config: TrainingConfig, resume_folder: Path | None) -> OpenAIGPTLMHeadModel:
    """The model in float32 on the device: the resumed checkpoint's, the fine-tuned checkpoint's, or a new one."""
    device = parse_device(config.device)
    folder = resume_folder or config.model
    if folder is not None:
        model = OpenAIGPTLMHeadModel.from_pretrained(folder, dtype=torch.float32, device=device,
                                                     attn_implementation=config.attn_implementation,
                                                     **config.config_overrides)
    else:
        model_config = _model_config(config.model_config)
        for key, value in config.config_overrides.items():
            setattr(model_config, key, value)
        model_config.validate()
        torch.manual_seed(config.seed)
        model = OpenAIGPTLMHeadModel(model_config, attn_implementation=config.attn_implementation).to(device)
    if config.seq_len > model.config.n_positions:
        raise ValueError(f"seq_len={config.seq_len} exceeds the model's n_positions={model.config.n_positions}")
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices and embeddings (2-D parameters) only; the fused implementation
    where this PyTorch has it for the device."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.betas, fused=True)
    except RuntimeError:  # no fused AdamW for this device
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.betas)


def _datasets(config: TrainingConfig, tokenizer, vocab_size: int) -> tuple[TokenRows, TokenRows | None]:
    tokens = load_tokens(config.train_data, tokenizer)
    eval_rows = None
    if config.eval_data:
        eval_rows = TokenRows(load_tokens(config.eval_data, tokenizer), config.seq_len, shuffle=False,
                              name="evaluation data")
    elif config.eval_fraction > 0:
        split = int(len(tokens) * (1 - config.eval_fraction))
        tokens, held_out = tokens[:split], tokens[split:]
        eval_rows = TokenRows(held_out, config.seq_len, shuffle=False, name="held-out evaluation data")
    train_rows = TokenRows(tokens, config.seq_len, seed=config.seed, name="training data")
    for rows, name in ((train_rows, "training data"), (eval_rows, "evaluation data")):
        if rows is not None:
            rows.check_vocabulary(vocab_size, name)
    return train_rows, eval_rows


def _autocast(config: TrainingConfig, device: torch.device):
    if config.bf16 or config.fp16:
        return torch.autocast(device.type, dtype=torch.bfloat16 if config.bf16 else torch.float16)
    return contextlib.nullcontext()


def _loss(model, inputs, targets, config: TrainingConfig, num_items_in_batch=None):
    return model(inputs, labels=targets, shift_labels=targets, num_items_in_batch=num_items_in_batch,
                 return_logits=not config.fused_loss).loss


@torch.no_grad()
def evaluate(model, rows: TokenRows, config: TrainingConfig, processes: distributed.Processes,
             device: torch.device) -> float:
    """The mean loss over the first eval_batches x batch_size x processes rows (at most all of them)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, targets)
    per_step = config.batch_size * processes.world_size
    count = min(config.eval_batches * per_step, rows.num_rows)
    sharded = is_sharded(model)
    for start in range(0, count, per_step):
        mine = range(start + processes.rank * config.batch_size, min(start + (processes.rank + 1) *
                                                                     config.batch_size, count))
        if not len(mine) and not sharded:
            continue
        # A sharded model's forward gathers weights with the other processes: one with no rows left still runs
        # (on the step's first row) and counts nothing.
        inputs, targets = (t.to(device) for t in rows.batch(mine.start if len(mine) else start, max(len(mine), 1)))
        with _autocast(config, device):
            loss = _loss(model, inputs, targets, config, num_items_in_batch=1).double()
        if len(mine):
            total[0] += loss
            total[1] += targets.numel()
    total = distributed.sum_over_processes(total, processes)
    model.train(was_training)
    return (total[0] / total[1]).item()


def train(config: TrainingConfig) -> TrainResult:
    """Trains as the config says; writes the final model (and tokenizer) to config.output_dir."""
    device = parse_device(config.device)
    processes = distributed.start(device)
    device = distributed.local_device(device)
    try:
        return _train(config, device, processes)
    finally:
        distributed.stop(processes)


def _train(config: TrainingConfig, device: torch.device, processes: distributed.Processes) -> TrainResult:
    if config.optimizer_in_backward and processes.distributed:
        raise ValueError("optimizer_in_backward runs in one process only: DDP and FSDP2 reduce the gradients after "
                         "its per-parameter steps would have used them")
    output_dir = Path(config.output_dir)
    if processes.main:
        output_dir.mkdir(parents=True, exist_ok=True)
    resume_folder = None
    if config.resume is not None:
        resume_folder = latest_checkpoint(output_dir) if config.resume == "latest" else Path(config.resume)
    trainer_state = load_trainer_state(resume_folder) if resume_folder else None

    model = build_model(config, resume_folder).train()
    tokenizer = _tokenizer(config, config.model)
    train_rows, eval_rows = _datasets(config, tokenizer, model.config.vocab_size)
    trained = distributed.wrap(model, processes, device, config.parallel)  # FSDP2: before the optimizer sees them
    optimizer = build_optimizer(model, config)
    in_backward = OptimizerInBackward(model, optimizer) if config.optimizer_in_backward else None
    scheduler = warmup_cosine_scheduler(optimizer, config.warmup_steps, config.max_steps, config.min_lr_ratio)
    # fp16: the loss is scaled up before backward and the gradients unscaled before clipping; a step whose gradients
    # overflow is skipped and the scale lowered. Disabled, the scaler passes everything through.
    scaler = torch.amp.GradScaler(device.type, enabled=config.fp16)
    step, position = 0, 0
    if trainer_state is not None:
        load_optimizer_state(optimizer, trainer_state["optimizer"])
        if trainer_state.get("scaler"):
            scaler.load_state_dict(trainer_state["scaler"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        step, position = trainer_state["step"], trainer_state["position"]
    if trainer_state is None or not load_rng_state(resume_folder, processes.rank):
        torch.manual_seed(config.seed + processes.rank + 1000 * step)  # each process its own dropout draws

    log = MetricsLog(output_dir, enabled=processes.main)
    result = TrainResult(output_dir, main_process=processes.main)
    saves_memory = config.gradient_checkpointing or config.optimizer_in_backward
    if allocator.wants_kept_memory(config.keep_freed_memory, device.type, saves_memory):
        result.kept_freed_memory = allocator.keep_freed_memory()
    rows_per_micro = config.batch_size * processes.world_size
    tokens_per_step = rows_per_micro * config.grad_accum * config.seq_len
    bar = tqdm(total=config.max_steps, initial=step, disable=not (config.progress and processes.main),
               desc="training", unit="step", dynamic_ncols=True)
    if processes.main and processes.distributed:
        held = f"; {describe(model)}" if is_sharded(model) else ""
        tqdm.write(f"{processes.world_size} processes, {config.parallel}{held}", file=sys.stderr)
    started = time.perf_counter()
    while step < config.max_steps:
        step_started = time.perf_counter()
        step_loss = torch.zeros((), device=device)
        for micro in range(config.grad_accum):
            first = position + processes.rank * config.batch_size
            inputs, targets = (t.to(device) for t in train_rows.batch(first, config.batch_size))
            position += rows_per_micro
            last = micro == config.grad_accum - 1
            with distributed.gradient_sync(trained, last):
                with _autocast(config, device):
                    loss = _loss(trained, inputs, targets, config) / config.grad_accum
                scaler.scale(loss).backward()
            step_loss += loss.detach()
        learning_rate = scheduler.get_last_lr()[0]
        grad_norm = None  # with the optimizer in backward no moment holds every gradient
        if in_backward is None:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf)
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # FSDP2
            scaler.step(optimizer)
            scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = distributed.mean_over_processes(step_loss, processes).item()
        seconds = time.perf_counter() - step_started
        result.losses[step] = loss_value
        log.write({"step": step, "loss": loss_value, "lr": learning_rate, "grad_norm": grad_norm,
                   "tokens": step * tokens_per_step, "tokens_per_s": tokens_per_step / seconds,
                   "elapsed_s": time.perf_counter() - started})
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{learning_rate:.2e}", tok_s=f"{tokens_per_step / seconds:.0f}")
        if eval_rows is not None and ((config.eval_every and step % config.eval_every == 0) or
                                      step == config.max_steps):
            eval_loss = evaluate(model, eval_rows, config, processes, device)
            result.eval_losses[step] = eval_loss
            log.write({"step": step, "eval_loss": eval_loss, "eval_perplexity": math.exp(min(eval_loss, 700))})
            bar.write(f"step {step}: eval loss {eval_loss:.4f}, perplexity {math.exp(min(eval_loss, 700)):.2f}")
        if config.save_every and step % config.save_every == 0:
            result.last_checkpoint = save_checkpoint(output_dir, step, model, optimizer, scheduler, position,
                                                     config.to_dict(), processes, scaler.state_dict())
    bar.close()
    if in_backward is not None:
        in_backward.remove()
    final_state = full_model_state(model)  # FSDP2: gathered by every process
    if processes.main:
        model.save_pretrained(output_dir, state_dict=final_state)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
        if config.plot:
            plot_loss_curve(output_dir / METRICS, output_dir / "loss.png")
    distributed.barrier(processes)
    return result
