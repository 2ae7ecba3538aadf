"""Static checks of the CUDA kernels without a GPU: the torch-free CMake build gate (CMakeLists.txt) compiles
csrc/cuda/*.cu for sm_80 and sm_90a with ptxas verbose and warnings as errors; the ptxas report is parsed, every
kernel must have no spill and no local memory, and registers / shared memory / occupancy on A100 and H100 (from
csrc/cuda/tools/occupancy.cpp, NVIDIA's cuda_occupancy.h) are written to benchmarks/results/cuda_resources.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cuda_resources.md"
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)

pytestmark = pytest.mark.skipif(NVCC is None or shutil.which("cmake") is None, reason="needs nvcc and cmake")

# Threads per block of each kernel family (the launchers' block sizes).
THREADS = {
    "add_layernorm_kernel": 128,
    "bias_gelu_kernel": 256,
    "flash_attention_mma_kernel": 128,
    "flash_attention_fp32_kernel": 128,
    "decode_attention_kernel": 128,
    "decode_merge_kernel": 128,
}

ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\w+)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(log: str) -> dict[tuple[str, str], dict]:
    """{(mangled kernel, arch): {regs, smem, stack, spill_stores, spill_loads}} from ptxas -v output."""
    kernels, current = {}, None
    for line in log.splitlines():
        if m := ENTRY.search(line):
            current = (m[1], m[2])
            kernels[current] = {}
        elif current and (m := FRAME.search(line)):
            kernels[current].update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        elif current and (m := USED.search(line)):
            kernels[current].update(regs=int(m[1]), smem=int(m[2] or 0))
    return kernels


def demangle(names: list[str]) -> list[str]:
    if shutil.which("c++filt") is None:
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    pretty = [n.replace("gpt_fast::cuda::", "").replace("__nv_bfloat16", "bf16").replace("__half", "fp16")
              .replace("float", "fp32") for n in out.splitlines()]
    return [re.sub(r"\(.*\)$", "", n).replace("void ", "") for n in pretty]


def family(name: str) -> str:
    return next(f for f in THREADS if f in name)


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    build = tmp_path_factory.mktemp("cuda_gate")
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DCMAKE_CUDA_COMPILER={NVCC}"],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    res = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True)
    log = res.stdout + res.stderr
    return {"returncode": res.returncode, "log": log, "kernels": parse_ptxas(log), "build": build}


def test_gate_builds_with_warnings_as_errors(gate):
    assert gate["returncode"] == 0, gate["log"][-4000:]


def test_every_kernel_family_built_for_both_architectures(gate):
    built = {(family(name), arch) for name, arch in gate["kernels"]}
    archs = {"sm_80", "sm_90a"}
    assert built == {(f, a) for f in THREADS for a in archs}


def test_no_spill_and_no_local_memory(gate):
    assert gate["kernels"]
    bad = {k: v for k, v in gate["kernels"].items() if v["stack"] or v["spill_stores"] or v["spill_loads"]}
    assert not bad, bad


def test_gate_flags_catch_local_memory(tmp_path):
    """The gate's ptxas flags turn local-memory use into an error (a dynamically indexed local array)."""
    flags = json.loads((ROOT / "csrc" / "build_flags.json").read_text())["nvcc_flags"]
    src = tmp_path / "lmem.cu"
    src.write_text("__global__ void k(float* o, const int* idx) { float a[64];\n"
                   "  for (int j = 0; j < 64; ++j) a[j] = o[j] * o[j + 64];\n"
                   "  for (int j = 0; j < 64; ++j) a[idx[j] & 63] += 1.f;\n"
                   "  for (int j = 0; j < 64; ++j) o[j] = a[j]; }\n")
    res = subprocess.run([NVCC, *flags, "-Xptxas=-warn-lmem-usage", "-Werror", "all-warnings", "-arch=sm_90a",
                          "-c", str(src), "-o", str(tmp_path / "lmem.o")], capture_output=True, text=True)
    assert res.returncode != 0 and "Local memory" in res.stderr, res.stderr


def test_write_resource_table(gate):
    kernels = sorted(gate["kernels"].items())
    names = demangle([name for (name, _), _ in kernels])
    occupancy = {}  # A100 from the sm_80 build, H100 from the sm_90a build
    for arch, gpu in (("sm_80", "A100"), ("sm_90a", "H100")):
        lines = "".join(f"{name} {v['regs']} {v['smem']} {THREADS[family(name)]}\n"
                        for (name, a), v in kernels if a == arch)
        occ = subprocess.run([str(gate["build"] / "cuda_occupancy")], input=lines, capture_output=True, text=True,
                             check=True).stdout.split("\n")
        for row in filter(None, occ):
            name, g, blocks, warps, frac, limiter = row.split()
            if g == gpu:
                occupancy[(name, gpu)] = (int(blocks), int(warps), float(frac), limiter)
    regs = {(n, a): v for (n, a), v in kernels}
    rows = []
    for (name, arch), pretty in zip([k for k, _ in kernels], names):
        if arch != "sm_90a":
            continue
        a100, h100 = occupancy[(name, "A100")], occupancy[(name, "H100")]
        assert a100[0] >= 1 and h100[0] >= 1, (name, a100, h100)  # every kernel must fit on an SM
        r80 = regs[(name, "sm_80")]["regs"]
        rows.append(f"| `{pretty}` | {THREADS[family(name)]} | {r80} / {regs[(name, arch)]['regs']} | "
                    f"{regs[(name, arch)]['smem']} | {a100[0]} ({a100[2]:.0%}, {a100[3]}) | "
                    f"{h100[0]} ({h100[2]:.0%}, {h100[3]}) |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# CUDA kernel resources (ptxas, no GPU needed)\n\n"
        "Written by `tests/test_cuda_static.py` from the ptxas report of the CMake build gate (sm_80 and sm_90a, "
        "`-Xptxas -v,-warn-spills,-warn-lmem-usage`, warnings as errors: no kernel spills or uses local memory). "
        "Occupancy from NVIDIA's `cuda_occupancy.h` with A100 and H100 SXM limits: resident blocks per SM "
        "(fraction of the 64 warp slots, limiting resource).\n\n"
        "| kernel | threads | registers sm_80 / sm_90a | static smem (B) | A100 blocks/SM | H100 blocks/SM |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    assert len(rows) == len({n for n, a in regs if a == "sm_90a"})


# --- Machine code (SASS) of the gate's objects, read with cuobjdump from PyPI (nvidia-cuda-cuobjdump, 13.2+) ---


def _nvidia_bin(tool: str) -> str | None:
    if found := shutil.which(tool):
        return found
    try:
        import nvidia  # namespace package of NVIDIA's PyPI wheels
    except ImportError:
        return None
    for base in nvidia.__path__:
        candidate = Path(base) / "cu13" / "bin" / tool
        if candidate.exists():
            return str(candidate)
    return None


CUOBJDUMP = _nvidia_bin("cuobjdump")
needs_cuobjdump = pytest.mark.skipif(CUOBJDUMP is None or _nvidia_bin("nvdisasm") is None,
                                     reason="needs cuobjdump and nvdisasm (pip install nvidia-cuda-cuobjdump "
                                            "nvidia-cuda-nvdisasm)")


def sass_by_function(obj: Path, arch: str) -> dict[str, str]:
    """{mangled function: its SASS} for one architecture of an object file."""
    env = {"PATH": f"{Path(_nvidia_bin('nvdisasm')).parent}:/usr/bin:/bin"}
    res = subprocess.run([CUOBJDUMP, "-sass", "-arch", arch, str(obj)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    parts = re.split(r"\s+Function : (\w+)\n", res.stdout)
    return dict(zip(parts[1::2], parts[2::2]))


def gate_object(gate, name: str) -> Path:
    found = list(gate["build"].rglob(f"{name}.cu.o"))
    assert len(found) == 1, found
    return found[0]


@needs_cuobjdump
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
def test_flash_attention_uses_tensor_cores(gate, arch):
    functions = sass_by_function(gate_object(gate, "flash_attention"), arch)
    mma = {name: code for name, code in functions.items() if "flash_attention_mma_kernel" in name}
    assert len(mma) == 4, list(functions)
    for name, code in mma.items():
        kind = "HMMA.16816.F32.BF16" if "bfloat16" in name else "HMMA.16816.F32"
        assert kind in code, f"{name} has no {kind}"
        assert code.count("HMMA.16816") >= 16, name  # Q K^T and P V for a whole tile, not a stray instruction
        assert "LDSM.16.M88.4" in code and "LDSM.16.MT88.4" in code, f"{name}: no ldmatrix (plain and .trans)"
        assert "LDGSTS" in code, f"{name}: no cp.async"


@needs_cuobjdump
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("source", ["flash_attention", "decode_attention", "add_layernorm", "bias_gelu"])
def test_no_local_memory_instructions(gate, arch, source):
    functions = sass_by_function(gate_object(gate, source), arch)
    assert functions
    for name, code in functions.items():
        assert not re.search(r"\b(LDL|STL)\b", code), f"{name} touches local memory"
