"""TrainingConfig: everything one training run needs, checked when it is made. The CLI (gpt_fast/cli/train.py)
fills it from the command line; the Python API takes it as it is."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field


@dataclass
class TrainingConfig:
    train_data: list[str]  # text files, folders of them (*.txt, recursively) or .bin files of uint16 token ids
    output_dir: str  # the final model (config.json + model.safetensors [+ tokenizer]), metrics, checkpoints/
    model: str | None = None  # fine-tune this checkpoint folder...
    model_config: str | dict | None = None  # ...or from scratch: a config.json, a folder, a dict, "gpt1"
    config_overrides: dict = field(default_factory=dict)  # e.g. {"n_layer": 2, "resid_pdrop": 0.0}
    tokenizer: str | None = None  # for text data: a tokenizer folder; default the model folder's, else GPT-1's
    eval_data: list[str] | None = None  # held-out data; default: the last eval_fraction of the training tokens
    eval_fraction: float = 0.0
    seq_len: int = 128  # tokens per row (at most the model's n_positions)
    batch_size: int = 8  # rows per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 100  # optimizer steps in all (the cosine schedule ends there)
    learning_rate: float = 3e-4
    min_lr_ratio: float = 0.1  # the cosine ends at learning_rate * min_lr_ratio
    warmup_steps: int = 0  # linear warmup from learning_rate / (warmup_steps + 1)
    weight_decay: float = 0.01  # on matrices and embeddings, not on biases and LayerNorm parameters
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0  # 0: no clipping (the norm is still logged)
    eval_every: int = 0  # steps between evaluations; 0: only at the end (when there is eval data)
    eval_batches: int = 8  # micro-batches per evaluation
    save_every: int = 0  # steps between resumable checkpoints; 0: none
    resume: str | None = None  # a checkpoints/step-N folder, or "latest" (of output_dir)
    seed: int = 0
    bf16: bool = False  # bfloat16 autocast (the weights and the optimizer stay float32)
    fp16: bool = False  # float16 autocast with dynamic loss scaling (torch.amp.GradScaler); mainly for CUDA
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    optimizer_in_backward: bool = False  # each parameter updated in backward, its gradient freed (needs no
    # clipping, no accumulation, no fp16, one process: gpt_fast/training/optimizer_in_backward.py)
    fused_loss: bool = True  # the fused LM head + cross-entropy (no logits); False: logits + F.cross_entropy
    device: str = "cpu"
    keep_freed_memory: bool | None = None  # glibc keeps freed blocks mapped (faster CPU steps, higher peak RSS:
    # gpt_fast/training/allocator.py); None: on the CPU unless gradient_checkpointing or optimizer_in_backward
    parallel: str = "ddp"  # under torchrun with several processes: "ddp" or "fsdp" (FSDP2, fully_shard per Block)
    progress: bool = True  # a tqdm bar on stderr (process 0)
    plot: bool = False  # loss.png from the metrics (needs matplotlib: pip install gpt_fast[plot])

    def __post_init__(self):
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        if isinstance(self.eval_data, str):
            self.eval_data = [self.eval_data]
        if not self.train_data:
            raise ValueError("train_data names no file")
        if (self.model is None) == (self.model_config is None) and self.resume is None:
            raise ValueError("give either model (fine-tune a checkpoint) or model_config (train from scratch)")
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "eval_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("warmup_steps", "eval_every", "save_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must lie in [0, 1), got {self.eval_fraction!r}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm must be non-negative")
        if self.plot and importlib.util.find_spec("matplotlib") is None:  # found out now, not after the run
            raise ImportError("plot=True (--plot) needs matplotlib: pip install gpt_fast[plot]")
        if self.keep_freed_memory not in (None, True, False):
            raise ValueError(f"keep_freed_memory must be True, False or None (automatic), got "
                             f"{self.keep_freed_memory!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {self.parallel!r}")
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 exclude each other: choose one autocast dtype")
        if self.fp16 and self.parallel == "fsdp":
            raise ValueError("fp16 with parallel='fsdp' is not supported (its loss scaling would need the overflow "
                             "check agreed across the shards); use bf16 with FSDP2, or fp16 with DDP")
        if self.optimizer_in_backward:
            needs_all_gradients = [what for what, given in (
                ("clipping by the global gradient norm (set max_grad_norm=0)", self.max_grad_norm > 0),
                ("gradient accumulation (set grad_accum=1)", self.grad_accum > 1),
                ("fp16 loss scaling (use bf16 or float32)", self.fp16)) if given]
            if needs_all_gradients:
                raise ValueError("optimizer_in_backward updates each parameter as soon as its gradient is made, so it "
                                 "cannot go with " + "; ".join(needs_all_gradients))
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
