"""The CUDA kernels' resources from the torch-free CMake build gate, without a GPU.

    python csrc/cuda/tools/resources.py [BUILD_DIR]

builds the gate (CMakeLists.txt: csrc/cuda/*.cu for sm_80 and sm_90a, ptxas verbose, warnings as errors), parses
the ptxas report and writes registers / shared memory / occupancy on A100 and H100 (csrc/cuda/tools/occupancy.cpp,
NVIDIA's cuda_occupancy.h) to benchmarks/results/cuda_resources.md. tests/test_cuda_static.py uses the same
functions to check the gate, and only reads.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "benchmarks" / "results" / "cuda_resources.md"
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)

# Threads per block of each kernel family (the launchers' block sizes).
THREADS = {
    "add_layernorm_kernel": 128,
    "bias_gelu_kernel": 256,
    "bias_gelu_backward_kernel": 256,
    "add_layernorm_backward_kernel": 128,
    "add_layernorm_backward_params_kernel": 256,
    "flash_attention_mma_kernel": 128,
    "flash_attention_fp32_kernel": 128,
    "flash_train_forward_kernel": 128,
    "flash_backward_delta_kernel": 128,
    "flash_backward_dkdv_kernel": 128,
    "flash_backward_dq_kernel": 128,
    "decode_attention_kernel": 128,
    "decode_merge_kernel": 128,
    "linear_quantized_kernel": 128,
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


def build_gate(build: Path) -> dict:
    """Configures and builds the gate in `build`; returns its return code, log and parsed ptxas report."""
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Unix Makefiles",
                          f"-DCMAKE_CUDA_COMPILER={NVCC}"], capture_output=True, text=True)
    if cfg.returncode != 0:
        raise RuntimeError(cfg.stdout + cfg.stderr)
    # GNU make's --output-sync prints each compilation's output whole: two parallel ptxas -v reports interleaved
    # line by line would give one kernel the next one's stack / spill line (seen once in a full test run).
    res = subprocess.run(["cmake", "--build", str(build), "-j", "2", "--", "--output-sync=target"],
                         capture_output=True, text=True)
    log = res.stdout + res.stderr
    return {"returncode": res.returncode, "log": log, "kernels": parse_ptxas(log), "build": build}


def resource_rows(gate: dict) -> list[str]:
    """One markdown row per kernel (sm_90a build), with A100 (sm_80) and H100 occupancy. Every kernel must fit."""
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
        if a100[0] < 1 or h100[0] < 1:
            raise AssertionError(f"{pretty} does not fit on an SM: A100 {a100}, H100 {h100}")
        r80 = regs[(name, "sm_80")]["regs"]
        rows.append(f"| `{pretty}` | {THREADS[family(name)]} | {r80} / {regs[(name, arch)]['regs']} | "
                    f"{regs[(name, arch)]['smem']} | {a100[0]} ({a100[2]:.0%}, {a100[3]}) | "
                    f"{h100[0]} ({h100[2]:.0%}, {h100[3]}) |")
    return rows


def write_table(rows: list[str]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# CUDA kernel resources (ptxas, no GPU needed)\n\n"
        "Written by `csrc/cuda/tools/resources.py` from the ptxas report of the CMake build gate (sm_80 and sm_90a, "
        "`-Xptxas -v,-warn-spills,-warn-lmem-usage`, warnings as errors: no kernel spills or uses local memory). "
        "Occupancy from NVIDIA's `cuda_occupancy.h` with A100 and H100 SXM limits: resident blocks per SM "
        "(fraction of the 64 warp slots, limiting resource).\n\n"
        "| kernel | threads | registers sm_80 / sm_90a | static smem (B) | A100 blocks/SM | H100 blocks/SM |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def main(argv: list[str]) -> int:
    build = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="cuda_gate_"))
    gate = build_gate(build)
    if gate["returncode"] != 0:
        print(gate["log"], file=sys.stderr)
        return 1
    write_table(resource_rows(gate))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
