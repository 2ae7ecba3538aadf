"""The optimizer step inside the backward pass: each parameter is updated the moment its gradient is complete, and
that gradient freed, so a step never holds every gradient at once (GPT-1's float32 gradients are 445 MiB, the
largest part of a checkpointed step's memory). PyTorch's recipe ("How to save memory by fusing the optimizer step
into the backward pass"), with one optimizer kept whole instead of one per parameter: a hook on each parameter's
gradient accumulation (`Tensor.register_post_accumulate_grad_hook`) calls `optimizer.step()`, which updates only
the parameters that have a gradient, which is then only this one, because every other was updated and freed by
its own hook. So the optimizer's state, learning-rate scheduler and checkpoints are those of a plain step, and a
run may switch between the two modes when it resumes.

What needs every gradient at once cannot go with it, and TrainingConfig refuses it: clipping by the global norm,
gradient accumulation over micro-batches, loss scaling's unscale-and-check (fp16), and DDP / FSDP2, whose
reductions run after these hooks.
"""

from __future__ import annotations

import torch
from torch.utils.hooks import RemovableHandle


class OptimizerInBackward:
    """Steps `optimizer` inside each backward of `model`'s parameters until `remove()` (also a context manager).

        with OptimizerInBackward(model, optimizer):
            loss.backward()          # the parameters are updated and their .grad is None afterwards
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trained = [p for p in model.parameters() if p.requires_grad]
        missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in stepped]
        if missing:
            raise ValueError(f"the optimizer does not hold these trained parameters: {', '.join(missing[:5])}"
                             + (" ..." if len(missing) > 5 else ""))
        self.optimizer = optimizer
        optimizer.zero_grad(set_to_none=True)  # no gradient left over to be stepped by another's hook
        self.handles: list[RemovableHandle] = [p.register_post_accumulate_grad_hook(self._step) for p in trained]

    def _step(self, parameter: torch.Tensor) -> None:
        self.optimizer.step()  # updates the parameters that have a gradient: this one
        self.optimizer.zero_grad(set_to_none=True)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> OptimizerInBackward:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
