"""The decode step and token selection never read a device value on the host.

On CUDA the decode step is captured once in a CUDA graph and sampling must not stall the stream: both break if any
op inside them copies a device value to the host (.item(), bool(tensor), nonzero, ...). Those all go through a
handful of aten ops, so running the same Python code on CPU under a dispatch mode that records every aten op shows
whether any of them is called, without a GPU. (The CUDA graph capture itself is tested in
tests/test_generation.py, on a GPU.)

A host read inside a C++ binding is invisible to that mode, so the CUDA decode binding is checked in its compiled
form: csrc/cuda/bindings.cpp is compiled (g++, no GPU needed) with one section per function, and every function
the binding can reach in that object is followed through its relocations to the external symbols it calls; none
may be a host read (Tensor::item, _local_scalar_dense, a copy to the CPU, a CUDA synchronisation). On a GPU, the
same is checked at run time with torch.cuda.set_sync_debug_mode("error").
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sysconfig
from collections import defaultdict
from pathlib import Path

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


# --- The CUDA decode binding, compiled -------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CUDA_INCLUDE = Path("/usr/local/cuda/include")
CU13_INCLUDE = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13" / "include"  # cuBLAS/cuSPARSE headers
BINDING = "decode_attention_cuda"
# external symbols (demangled) that read a device value on the host or wait for the device
HOST_READ_SYMBOLS = re.compile(r"::item\b|\bitem<|_local_scalar_dense|::cpu\(|_ops::to_dtype_layout|_ops::_to_copy|"
                               r"_ops::to_device|_ops::to_other|_ops::is_nonzero|_ops::equal|_ops::nonzero|"
                               r"_ops::allclose|at::print|Synchronize|\bcudaMemcpy\b|cudaMemcpy2D\b|\bcudaMemcpy\(")
needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None or shutil.which("readelf") is None or shutil.which("c++filt") is None
    or not (CUDA_INCLUDE / "cuda_runtime.h").exists() or not (CU13_INCLUDE / "cusparse.h").exists(),
    reason="needs g++, readelf, c++filt and the CUDA headers (toolkit and nvidia-cu13 wheels)")


def compile_bindings(source: str, out: Path) -> Path:
    src = out.with_suffix(".cpp")
    src.write_text(source)
    torch_include = Path(torch.__file__).parent / "include"
    cmd = ["g++", "-c", "-std=c++20", "-O1", "-fPIC", "-ffunction-sections", f"-I{torch_include}",
           f"-I{torch_include / 'torch' / 'csrc' / 'api' / 'include'}", f"-I{CUDA_INCLUDE}", f"-I{CU13_INCLUDE}",
           f"-I{ROOT / 'csrc'}", str(src), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    return out


def reachable_externals(obj: Path, root: str) -> list[str]:
    """Demangled external symbols called by the function whose mangled name contains `root`, or by any function
    of the object it reaches (one .text.<name> section per function, edges from their relocations)."""
    sections = subprocess.run(["readelf", "-SW", str(obj)], capture_output=True, text=True, check=True).stdout
    defined = set(re.findall(r"\.text\.(\S+)", sections))
    relocations = subprocess.run(["readelf", "-rW", str(obj)], capture_output=True, text=True, check=True).stdout
    calls, current = defaultdict(set), None
    for line in relocations.splitlines():
        if line.startswith("Relocation section"):
            found = re.match(r"Relocation section '\.rela\.text\.(\S+)'", line)
            current = found.group(1) if found else None
        elif current and re.match(r"\s*[0-9a-f]{8,}\s", line) and len(line.split()) >= 5:
            calls[current].add(line.split()[4])
    roots = [name for name in defined if root in name]
    assert len(roots) == 1, f"{root}: found {roots}"
    seen, todo, external = set(), roots, set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for callee in calls[name]:
            callee = callee.removeprefix(".text.")  # a local function is called through its section's symbol
            if callee in defined:
                todo.append(callee)
            elif not callee.startswith("."):  # .LC*, .rodata: constants
                external.add(callee)
    demangled = subprocess.run(["c++filt"], input="\n".join(sorted(external)), capture_output=True, text=True,
                               check=True).stdout
    return demangled.splitlines()


@pytest.fixture(scope="module")
def binding_source():
    return (ROOT / "csrc" / "cuda" / "bindings.cpp").read_text()


@needs_compiler
def test_cuda_decode_binding_reads_nothing_on_the_host(binding_source, tmp_path):
    calls = reachable_externals(compile_bindings(binding_source, tmp_path / "bindings.o"), BINDING)
    assert any("launch_decode_attention" in c for c in calls), calls  # the walk really follows the binding
    assert [c for c in calls if HOST_READ_SYMBOLS.search(c)] == []


# Host reads put back into the binding for the check's own test, each with the symbol it must be seen by:
# (statement inserted after the lengths are made contiguous, symbol).
HOST_READS_IN_CPP = [
    ("TORCH_CHECK_INDEX(lengths.ge(0).logical_and(lengths.le(Tmax - S)).all().item<bool>(), op, \": range\");",
     "bool at::Tensor::item<bool>() const"),
    ("TORCH_CHECK(lengths.cpu().const_data_ptr<int64_t>()[0] >= 0, op, \": negative\");", "_ops::to_dtype_layout"),
    ("check_lengths_on_host(lengths, Tmax - S, op);", "long at::Tensor::item<long>() const"),  # in a helper
]
HOST_READ_HELPER = """
namespace gpt_fast { namespace {
__attribute__((noinline)) void check_lengths_on_host(const at::Tensor& lengths, int64_t most, const char* op) {
  TORCH_CHECK_INDEX(lengths.max().item<int64_t>() <= most, op, ": out of range");
}
} }
"""


@needs_compiler
def test_binding_check_sees_a_host_read(binding_source, tmp_path):
    """The check itself: the binding with host reads put back (directly, through a copy to the CPU, and in a
    helper function it calls) is caught, each by its own symbol."""
    anchor = "  auto lengths = cache_lengths.contiguous();\n"
    opening = "namespace gpt_fast {\nnamespace {\n"
    assert binding_source.count(anchor) == 1 and binding_source.count(opening) == 1
    source = binding_source.replace(anchor, anchor + "".join(f"  {line}\n" for line, _ in HOST_READS_IN_CPP))
    source = source.replace(opening, HOST_READ_HELPER + opening)
    calls = reachable_externals(compile_bindings(source, tmp_path / "bindings.o"), BINDING)
    caught = [c for c in calls if HOST_READ_SYMBOLS.search(c)]
    for _, symbol in HOST_READS_IN_CPP:
        assert any(symbol in c for c in caught), (symbol, caught)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not ops.has_kernel("decode_attention", "cuda"), reason="extension built without CUDA")
def test_cuda_decode_step_never_syncs():
    """A whole decode step of the model on the GPU (GEMMs, decode_attention, LayerNorms, logits), and the op
    alone with an out-of-range row, under torch's sync debug mode: any device-to-host sync raises."""
    torch.manual_seed(0)
    model = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=3))
    model = model.cuda().eval()
    config, device = model.config, torch.device("cuda")
    cache = StaticKVCache(config.n_layer, 2, config.n_head, 16, config.n_embd // config.n_head, model.dtype, device)
    decoder = IncrementalDecoder(model, cache, plan_kernels(None, device, model.dtype))
    tokens = torch.tensor([4, 9], device=device)
    qkv = torch.randn(2, 1, 3 * 48, device=device)
    k, v = torch.zeros(2, 3, 16, 16, device=device), torch.zeros(2, 3, 16, 16, device=device)
    lengths = torch.tensor([3, 2**63 - 1], device=device)
    with torch.inference_mode():
        decoder.prefill(torch.randint(0, 97, (2, 5), device=device), torch.tensor([5, 3], device=device),
                        all_full=False)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            decoder.step(tokens)
            out = torch.ops.gpt_fast.decode_attention(qkv, k, v, lengths, 3)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert out[0].isfinite().all() and out[1].isnan().all()  # the out-of-range row: NaN, nothing written
    assert (k[1] == 0).all() and (v[1] == 0).all()
