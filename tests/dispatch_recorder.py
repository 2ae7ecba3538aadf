"""OpRecorder: a TorchDispatchMode that lists every ATen or custom op run under it (as "namespace::op.overload"),
for tests that check which kernel a path really takes (e.g. that autograd calls a backward kernel)."""

from torch.utils._python_dispatch import TorchDispatchMode


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.called: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.called.append(str(func))
        return func(*args, **(kwargs or {}))
