"""Resumable checkpoints: output_dir/checkpoints/step-N/ holds the model (save_pretrained: loadable by gpt_fast and
transformers as it is), trainer_state.pt (optimizer, scheduler, fp16 loss scaler, step, data position, the config)
and one rng_state_<rank>.pt per process (torch's CPU and CUDA generators). Written to a temporary folder and renamed, so
a run killed while saving leaves the previous checkpoint intact. A sharded (FSDP2) run gathers full tensors first, so
every checkpoint has the same format whatever the number of processes and the parallelism that wrote it."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from gpt_fast.training.distributed import Processes, barrier
from gpt_fast.training.sharding import full_model_state, full_optimizer_state

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.pt"


def checkpoint_folder(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:07d}"


def latest_checkpoint(output_dir: str | Path) -> Path:
    found = sorted((Path(output_dir) / CHECKPOINTS).glob("step-*[0-9]"))
    if not found:
        raise FileNotFoundError(f"resume='latest' but {Path(output_dir) / CHECKPOINTS} holds no checkpoint")
    return found[-1]


def rng_state() -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir, step: int, model, optimizer, scheduler, position: int, config: dict,
                    processes: Processes, scaler: dict | None = None) -> Path:
    """Every process calls it (each writes its RNG state; process 0 the rest). Returns the folder."""
    folder = checkpoint_folder(output_dir, step)
    partial = folder.with_name(folder.name + ".partial")
    model_state, optimizer_state = full_model_state(model), full_optimizer_state(optimizer)  # collectives
    if processes.main:
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial, state_dict=model_state)
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "step": step,
                    "position": position, "world_size": processes.world_size, "config": config,
                    "scaler": scaler or None},
                   partial / TRAINER_STATE)
    barrier(processes)
    torch.save(rng_state(), partial / f"rng_state_{processes.rank}.pt")
    barrier(processes)
    if processes.main:
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    barrier(processes)
    return folder


def load_trainer_state(folder: Path) -> dict:
    path = Path(folder) / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a training checkpoint: no {TRAINER_STATE}")
    return torch.load(path, weights_only=False)  # our own file: optimizer state and the config


def load_rng_state(folder: Path, rank: int) -> bool:
    """Restores this process's generators; False when the checkpoint has none for this rank (saved by fewer
    processes), in which case the caller seeds them."""
    path = Path(folder) / f"rng_state_{rank}.pt"
    if not path.is_file():
        return False
    set_rng_state(torch.load(path, weights_only=False))
    return True
