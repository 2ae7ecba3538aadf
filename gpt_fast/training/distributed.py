"""Many processes through torch.distributed, as torchrun starts them: the process group from torchrun's
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), gloo on CPU and NCCL on CUDA, DistributedDataParallel
or FSDP2 (gpt_fast/training/sharding.py) around the model, and the few collectives the trainer needs."""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gpt_fast.training.sharding import shard


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this run made the process group, and ends it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device: torch.device) -> Processes:
    """Joins the process group torchrun describes (a group already made by the caller is used as it is)."""
    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size(), False)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch has no torch.distributed")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), True)


def local_device(device: torch.device) -> torch.device:
    """A CUDA device without an index becomes the one torchrun's LOCAL_RANK names (and the current one)."""
    if device.type != "cuda" or device.index is not None:
        return device
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def stop(processes: Processes) -> None:
    """Ends the process group this run made. The model, its DDP / FSDP2 wrappers and their device mesh sit in
    reference cycles that keep the group's backend alive until a garbage collection: collected first, so that gloo's
    worker threads end here rather than during the interpreter's shutdown (where, once in a CI run, process 1 of an
    FSDP2 run aborted with "terminate called without an active exception" after finishing its work; PyTorch's
    c10d discussion of gloo threads outliving the interpreter)."""
    if processes.owns_group:
        gc.collect()
        dist.destroy_process_group()


PARALLEL = ("ddp", "fsdp")


def wrap(model: torch.nn.Module, processes: Processes, device: torch.device, parallel: str = "ddp") -> torch.nn.Module:
    """With several processes: DistributedDataParallel around the model (weights broadcast from 0), or for
    parallel="fsdp" the model sharded in place (FSDP2; its weights are process 0's only if every process built the
    same ones, which the trainer's seeded or loaded models are). One process: the model as it is."""
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {', '.join(PARALLEL)}, got {parallel!r}")
    if not processes.distributed:
        return model
    if parallel == "fsdp":
        return shard(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                     else None)


def gradient_sync(trained: torch.nn.Module, enabled: bool):
    """A context in which backward passes reduce the gradients between processes only when enabled (off for the
    accumulation micro-batches but the last)."""
    if enabled:
        return contextlib.nullcontext()
    if isinstance(trained, torch.nn.parallel.DistributedDataParallel):
        return trained.no_sync()
    if hasattr(trained, "set_requires_gradient_sync"):  # FSDP2
        return _fsdp_no_sync(trained)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(trained):
    trained.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        trained.set_requires_gradient_sync(True)


def mean_over_processes(value: torch.Tensor, processes: Processes) -> torch.Tensor:
    if processes.distributed:
        value = value.clone()
        dist.all_reduce(value)
        value /= processes.world_size
    return value


def sum_over_processes(value: torch.Tensor, processes: Processes) -> torch.Tensor:
    if processes.distributed:
        value = value.clone()
        dist.all_reduce(value)
    return value


def barrier(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()
