"""ReplayedStep: IncrementalDecoder.step recorded once as the list of operators it dispatches, then re-run from that
list for every later token: the CPU counterpart of CUDAGraphStep (decoder.py).

A GPT-1 decode step is ~93 operator calls (49 linear layers, 24 add_layernorm, 12 decode_attention, a few small
ones). Walking the model for them (module calls, the block body, the bound layer calls, the op wrappers) costs
~4 us of Python per operator, 0.3-0.4 ms a token: ~15% of an int4 step. The recording keeps what the model's code
decided (the operators, in order, with their non-tensor arguments) and re-runs only the operators.

How: the step runs once under a TorchDispatchMode that notes every operator with its arguments. A tensor argument
that an earlier operator of the step produced becomes a slot, filled from that operator's result at each replay;
any other tensor (weights and their packed copies, the KV cache, the cache lengths, the static tokens buffer) is
kept by reference and read as it is at replay time (in-place updates such as the cache writes and `lengths += 1`
are operators of the step too, so they happen again). Each replay makes new output tensors, as the plain step
does: the logits it returns are not overwritten by the next call.

This is exact only for a step whose operators do not depend on tensor values read back into Python, and whose
Python does nothing but call operators; so the step is not replayed (it stays the plain step; `refused` says why)
when it reads a value to the host (.item(), int(t), bool(t), .tolist(): aten._local_scalar_dense and kin), draws
random numbers, runs with gradients or under torch.compile, or when the model has forward hooks (Python that must
run every step). The decode steps of all three backends qualify; tests/test_replayed_step.py checks the replay
against the plain step on each. Used by generate() (greedy, sampling, beam search; `step_replay=`), and by the
server's engine, wherever no CUDA graph is.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from gpt_fast.models.hooks import forward_hooked

# Operators whose results Python reads (host syncs): a step using them may take other paths on other values.
_HOST_READS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::nonzero",
               "aten::_assert_async", "aten::allclose"}


# Tensor methods that hand values to Python without an operator the dispatch mode would see (.tolist(), .numpy())
# or with one (the rest; watched here too, so the reason names the method).
_HOST_METHODS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.item, torch.Tensor.__bool__,
                 torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__}


class _HostReadWatch(TorchFunctionMode):
    """Notes the first Tensor method of _HOST_METHODS called while recording."""

    def __init__(self):
        super().__init__()
        self.refused = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.refused is None and func in _HOST_METHODS:
            self.refused = f"it reads a tensor value back to Python (Tensor.{func.__name__})"
        return func(*args, **(kwargs or {}))


def _refusal(func, args, kwargs) -> str | None:
    """Why an operator call cannot be replayed blindly, or None."""
    name = func._schema.name
    if name in _HOST_READS:
        return f"it reads a tensor value back to Python ({name})"
    if torch.Tag.nondeterministic_seeded in func.tags:
        # aten::dropout(input, p, train) and kin draw nothing when not training (the eager backend's modules)
        train = kwargs.get("train", args[2] if len(args) > 2 else True)
        if not (name.endswith("dropout") and train is False):
            return f"it draws random numbers ({name})"
    return None


class _Recorder(TorchDispatchMode):
    """Notes each operator call: (func, args with produced tensors replaced by slot numbers, kwargs, out slots)."""

    def __init__(self):
        super().__init__()
        self.program = []  # (func, args, fills, kwargs, first output slot, number of outputs or None)
        self.slots = {}  # id(tensor) -> slot, for tensors produced by the recorded operators
        self.n_slots = 0
        self.keep = []  # the recorded step's tensors, alive until the recording ends (ids stay unique)
        self.refused = None

    def _arg(self, value, fills, position):
        if isinstance(value, torch.Tensor):
            slot = self.slots.get(id(value))
            if slot is not None:
                fills.append((position, slot))
                return None
            return value
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) and id(v) in self.slots
                                                    for v in value):
            parts = [self._arg(v, [], None) for v in value]  # constants in place, slots filled below
            inner = [(j, self.slots[id(v)]) for j, v in enumerate(value)
                     if isinstance(v, torch.Tensor) and id(v) in self.slots]
            fills.append((position, (type(value), parts, inner)))
            return None
        return value

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.refused is None:
            self.refused = _refusal(func, args, kwargs)
        out = func(*args, **kwargs)
        fills = []
        recorded_args = [self._arg(a, fills, i) for i, a in enumerate(args)]
        kw_fills = []
        recorded_kwargs = {k: self._arg(v, kw_fills, k) for k, v in kwargs.items()}
        fills += kw_fills
        outputs = out if isinstance(out, (list, tuple)) else (out,)
        first = self.n_slots
        for o in outputs:  # an in-place operator's result is its input: the slot then holds that same tensor
            if isinstance(o, torch.Tensor):
                self.slots[id(o)] = self.n_slots
            self.n_slots += 1
        self.keep.append((args, kwargs, out))
        n_out = len(outputs) if isinstance(out, (list, tuple)) else None  # None: one tensor (or None)
        self.program.append((getattr(func, "_op", func), tuple(recorded_args), tuple(fills), recorded_kwargs,
                             first, n_out))
        return out


def refusal_before_recording(model) -> str | None:
    """Why a decode step of model cannot be replayed, as far as can be told before running one; None if it may."""
    if forward_hooked(model):
        return "the model has forward hooks (Python that must run every step)"
    if torch.is_grad_enabled():
        return "gradients are enabled"
    if torch.compiler.is_compiling():
        return "it is being compiled"
    return None


class ReplayedStep:
    """decoder.step (or the decoder method named by `method`: extend, for ReplayedExtend) recorded at its second
    call (the first binds the layers and packs weights: one-time work) and replayed from then on; calling it copies
    the tokens into the recorded input buffer. With required=True a step that cannot be replayed raises ValueError;
    otherwise it stays the plain step (self.refused says why)."""

    def __init__(self, decoder, required: bool = False, method: str = "step"):
        self.decoder = decoder
        self.run = getattr(decoder, method)  # step, or extend (ReplayedExtend)
        self.required = required
        self.tokens = None  # (B,) static input, a copy of the second call's tokens
        self.calls = 0
        self.program = None  # the recorded operators, once recorded
        self.refused = refusal_before_recording(decoder.model)  # why the step cannot be replayed, once known
        self.result = None  # the slot of the returned logits
        self.n_slots = 0
        if required and self.refused is not None:
            raise ValueError(f"step_replay=True: the decode step cannot be replayed: {self.refused}")

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.program is not None:
            if tokens.shape != self.tokens.shape:
                raise ValueError(f"a replayed step takes tokens of shape {tuple(self.tokens.shape)} (its recording's), "
                                 f"got {tuple(tokens.shape)}")
            self.tokens.copy_(tokens)
            return self.replay()
        self.calls += 1
        if self.calls == 1 or self.refused is not None:
            return self.run(tokens)
        self.tokens = tokens.clone()
        return self.record()

    def record(self) -> torch.Tensor:
        """One real step on self.tokens, its operators noted. When they cannot be replayed, self.refused says why
        (ValueError if required) and later calls take the plain step."""
        recorder, watch = _Recorder(), _HostReadWatch()
        with watch, recorder:
            logits = self.run(self.tokens)
        slot = recorder.slots.get(id(logits))
        self.refused = (watch.refused or recorder.refused
                        or (None if slot is not None else "its result is not made by its operators"))
        if self.refused is not None:
            if self.required:
                raise ValueError(f"step_replay=True: the decode step cannot be replayed: {self.refused}")
            return logits
        self.program, self.result, self.n_slots = recorder.program, slot, recorder.n_slots
        return logits

    def replay(self) -> torch.Tensor:
        values = [None] * self.n_slots
        for func, args, fills, kwargs, first, n_out in self.program:
            if fills:
                args, kwargs = list(args), dict(kwargs)
                for position, source in fills:
                    if isinstance(source, int):
                        value = values[source]
                    else:  # a list / tuple argument holding produced tensors
                        kind, parts, inner = source
                        parts = list(parts)
                        for j, s in inner:
                            parts[j] = values[s]
                        value = kind(parts)
                    if isinstance(position, int):
                        args[position] = value
                    else:
                        kwargs[position] = value
            out = func(*args, **kwargs)
            if n_out is None:
                values[first] = out
            else:
                values[first:first + n_out] = out
        return values[self.result]


class ReplayedExtend:
    """decoder.extend (speculative decoding's verification pass, and an assistant's catching up) replayed as
    ReplayedStep replays step: one recording per number of new tokens, each made at that count's second call.
    enabled=False: the plain extend."""

    def __init__(self, decoder, enabled: bool = True):
        self.decoder = decoder
        self.enabled = enabled
        self.by_count = {}  # new tokens per row -> its ReplayedStep over extend

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.decoder.extend(tokens)
        replayed = self.by_count.get(tokens.shape[1])
        if replayed is None:
            replayed = self.by_count[tokens.shape[1]] = ReplayedStep(self.decoder, method="extend")
        return replayed(tokens)
