"""The decode step and token selection never read a device value on the host.

On CUDA the decode step is captured once in a CUDA graph and sampling must not stall the stream: both break if any
op inside them copies a device value to the host (.item(), bool(tensor), nonzero, ...). Those all go through a
handful of aten ops, so running the same Python code on CPU under a dispatch mode that records every aten op shows
whether any of them is called, without a GPU. (The CUDA graph capture itself is tested in
tests/test_generation.py, on a GPU.)
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel, ops
from gpt_fast.generation.decoder import IncrementalDecoder
from gpt_fast.generation.kv_cache import StaticKVCache
from gpt_fast.generation.sampling import SamplingConfig, TokenSelector
from gpt_fast.ops.kernel_plan import plan_kernels

# aten ops whose result size or value the host must read from the device
HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "equal", "is_nonzero",
              "item", "repeat_interleave"}


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name.split("::", 1)[1])
        return func(*args, **(kwargs or {}))


def host_reads(fn) -> list[str]:
    with RecordOps() as recorder:
        fn()
    assert recorder.names, "the recorder saw no op at all"
    return [name for name in recorder.names if name in HOST_READS]


def test_recorder_sees_host_reads():
    # the check itself: a step that did call .item() or bool() must be caught
    x = torch.ones(3)
    assert host_reads(lambda: x.sum().item()) == ["_local_scalar_dense"]
    assert host_reads(lambda: bool((x > 0).any())) == ["_local_scalar_dense"]


def make_decoder(small_m: bool):
    """A decoder after its prefill, every matmul on linear_small_m (the CPU step) or on the GEMM (what CUDA runs
    and captures in its graph, and the CPU step of batches over 32 rows)."""
    torch.manual_seed(0)
    model = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=3))
    model.eval()
    config = model.config
    cache = StaticKVCache(config.n_layer, 2, config.n_head, 16, config.n_embd // config.n_head, model.dtype,
                          torch.device("cpu"))
    plan = plan_kernels(None, torch.device("cpu"), model.dtype)
    assert plan.small_m_rows >= 2 or not small_m
    decoder = IncrementalDecoder(model, cache, plan if small_m else dataclasses.replace(plan, small_m_rows=0))
    ids = torch.randint(0, 97, (2, 5))
    with torch.inference_mode():
        decoder.prefill(ids, torch.tensor([5, 3]), all_full=False)
    return decoder, torch.tensor([4, 9])


@pytest.mark.skipif(not ops.has_kernel("decode_attention", "cpu"), reason="extension not built")
@pytest.mark.parametrize("small_m", [False, True], ids=["gemm", "small_m"])
def test_decode_step_reads_nothing_on_the_host(small_m):
    decoder, tokens = make_decoder(small_m)
    with torch.inference_mode():
        assert host_reads(lambda: decoder.step(tokens)) == []


SELECTIONS = [
    dict(do_sample=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, eos_blocked_steps=0),
    dict(do_sample=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.3, eos_blocked_steps=5),
    dict(do_sample=True, temperature=0.7, top_k=10, top_p=0.9, repetition_penalty=1.2, eos_blocked_steps=5),
]


@pytest.mark.parametrize("settings", SELECTIONS, ids=["greedy", "greedy-penalty-min-length", "sample-all"])
def test_token_selection_reads_nothing_on_the_host(settings):
    selector = TokenSelector(SamplingConfig(**settings), torch.tensor([3]), 2, 97, torch.device("cpu"),
                             torch.Generator().manual_seed(0))
    selector.add_prompt(torch.randint(0, 97, (2, 4)), torch.tensor([4, 2]))
    logits = torch.randn(2, 97)

    def one_step():
        tokens = selector.select(selector.process(logits.clone(), step=1))
        selector.add_tokens(tokens)

    assert host_reads(one_step) == []
