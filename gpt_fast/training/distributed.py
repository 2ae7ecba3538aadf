"""Many processes through torch.distributed, as torchrun starts them: the process group from torchrun's
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), gloo on CPU and NCCL on CUDA, DistributedDataParallel
around the model, and the few collectives the trainer needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    if processes.owns_group:
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, processes: Processes, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the model when there are several processes (weights broadcast from 0)."""
    if not processes.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                     else None)


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
