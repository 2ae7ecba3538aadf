"""Static checks of the CUDA kernels without a GPU: the torch-free CMake build gate (CMakeLists.txt) compiles
csrc/cuda/*.cu for sm_80 and sm_90a with ptxas verbose and warnings as errors; the ptxas report is parsed, every
kernel must have no spill and no local memory and fit on an A100 and an H100 SM (occupancy from
csrc/cuda/tools/occupancy.cpp). The table in benchmarks/results/cuda_resources.md is written by
csrc/cuda/tools/resources.py, which this test shares its parsing with; the test only reads."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cuda_resources", ROOT / "csrc" / "cuda" / "tools" / "resources.py")
resources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resources)
NVCC, THREADS, parse_ptxas, family = resources.NVCC, resources.THREADS, resources.parse_ptxas, resources.family

pytestmark = pytest.mark.skipif(NVCC is None or shutil.which("cmake") is None, reason="needs nvcc and cmake")


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    return resources.build_gate(tmp_path_factory.mktemp("cuda_gate"))


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


def test_every_kernel_fits_and_the_table_lists_each(gate):
    rows = resources.resource_rows(gate)  # raises when a kernel does not fit on an SM
    assert len(rows) == len({n for n, a in gate["kernels"] if a == "sm_90a"})
    table = resources.RESULTS.read_text()
    for row in rows:
        assert row.split(" | ")[0] in table, f"{row.split(' | ')[0]} missing: run csrc/cuda/tools/resources.py"


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
@pytest.mark.parametrize("source", ["flash_attention", "decode_attention", "add_layernorm", "bias_gelu",
                                    "bias_gelu_backward", "add_layernorm_backward", "flash_attention_train",
                                    "flash_attention_backward"])
def test_no_local_memory_instructions(gate, arch, source):
    functions = sass_by_function(gate_object(gate, source), arch)
    assert functions
    for name, code in functions.items():
        assert not re.search(r"\b(LDL|STL)\b", code), f"{name} touches local memory"
