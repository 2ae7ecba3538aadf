"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the trainer: each Block sharded on its own, then the root (the
embeddings, the final parts and the tied LM head), and the gathering that lets a sharded run save and resume
checkpoints in the format single-process and DDP runs use.

Sharded, each parameter is a DTensor holding this process's slice of dim 0 (torch.chunk's split); so are the
AdamW moments. A checkpoint holds full tensors: every process takes part in each gather (the same tensors in the
same order), process 0 writes. Resuming slices the full optimizer state back onto the current processes, so a
checkpoint moves between world sizes and between DDP and FSDP.

FSDP2 and DTensor are imported when a model is first sharded, not with this module: importing them takes ~0.55 s
(torch.distributed.tensor), which every `import gpt_fast` and every `gpt-fast` command would otherwise pay. No tensor
can be a DTensor before torch.distributed.tensor is loaded, so the checks below look for the class in sys.modules.
"""

from __future__ import annotations

import importlib
import sys

import torch

_DTENSOR_MODULE = "torch.distributed.tensor"


def _is_dtensor(value) -> bool:
    module = sys.modules.get(_DTENSOR_MODULE)  # not loaded: nothing is a DTensor yet
    return module is not None and isinstance(value, module.DTensor)


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """fully_shard per Block, then the root; the model is changed in place (its parameters become DTensors) and
    returned. Forward and backward gather each Block's weights just before it runs and free them after."""
    fully_shard = importlib.import_module("torch.distributed.fsdp").fully_shard  # (see the module's note)
    for block in model.base_model.h:
        fully_shard(block)
    fully_shard(model)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return any(_is_dtensor(p) for p in model.parameters())


def describe(model: torch.nn.Module) -> str:
    """How much of the model this process holds, e.g. "FSDP2: this process holds 2,520 of 5,024 parameter
    elements"."""
    params = list(model.parameters())
    local = sum(p.to_local().numel() if _is_dtensor(p) else p.numel() for p in params)
    return f"FSDP2: this process holds {local:,} of {sum(p.numel() for p in params):,} parameter elements"


def _full(value, gathered: dict):
    """A DTensor's full tensor on the CPU, gathered once per tensor (the tied LM head is the token embedding)."""
    if not _is_dtensor(value):
        return value
    if id(value) not in gathered:
        gathered[id(value)] = value.full_tensor().cpu()
    return gathered[id(value)]


def full_model_state(model: torch.nn.Module) -> dict | None:
    """The model's state dict with full tensors (every process must call it); None for an unsharded model (its
    own state_dict() is already full)."""
    if not is_sharded(model):
        return None
    gathered = {}
    return {key: _full(value, gathered) for key, value in model.state_dict().items()}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with every sharded moment gathered (every process must call it): the layout an
    unsharded optimizer over the same parameter groups saves."""
    state = optimizer.state_dict()
    gathered = {}
    state["state"] = {index: {name: _full(value, gathered) for name, value in per_param.items()}
                      for index, per_param in state["state"].items()}
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """optimizer.load_state_dict(state) for full tensors, each moment of a sharded parameter then sliced as the
    parameter is (every process loads the same state)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for param in group["params"]:
            if not _is_dtensor(param):
                continue
            distribute_tensor = sys.modules[_DTENSOR_MODULE].distribute_tensor
            per_param = optimizer.state.get(param, {})
            for name, value in per_param.items():
                if isinstance(value, torch.Tensor) and not _is_dtensor(value) and value.shape == param.shape:
                    per_param[name] = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
