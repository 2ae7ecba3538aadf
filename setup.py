"""Builds gpt_fast and its one extension, gpt_fast._C.

Sources are found by folder (csrc/*.cpp, csrc/cpu/*.cpp, csrc/cuda/*.cu); compiler flags and CUDA architectures
are read from csrc/build_flags.json, which CMakeLists.txt reads too, so nothing is written twice.

CUDA sources are built whenever nvcc and a CUDA-enabled torch are present, with or without a GPU.
GPT_FAST_CUDA=0 forces them off, GPT_FAST_CUDA=1 forces them on (and fails loudly when that is impossible).
TORCH_CUDA_ARCH_LIST defaults to the list in csrc/build_flags.json.
"""

import glob
import json
import os
import shutil
import sysconfig
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
FLAGS = json.loads((ROOT / "csrc" / "build_flags.json").read_text())


def _locate_cuda_home() -> None:
    """torch guesses CUDA_HOME from `which nvcc`; where nvcc is a wrapper script that guess has no headers."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or not shutil.which("nvcc"):
        return
    guess = Path(shutil.which("nvcc")).resolve().parent.parent
    for candidate in (guess, Path("/usr/local/cuda")):
        if (candidate / "include" / "cuda_runtime.h").is_file():
            os.environ["CUDA_HOME"] = str(candidate)
            return


def _cuda_wanted() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    choice = os.environ.get("GPT_FAST_CUDA", "").strip()
    available = torch.version.cuda is not None and CUDA_HOME is not None and shutil.which("nvcc") is not None
    if choice == "0":
        return False
    if choice == "1":
        if not available:
            raise RuntimeError(
                "GPT_FAST_CUDA=1 but CUDA sources cannot be built: need a CUDA build of torch "
                f"(torch.version.cuda={torch.version.cuda}) and nvcc (CUDA_HOME={CUDA_HOME})."
            )
        return True
    if choice not in ("", "auto"):
        raise ValueError(f"GPT_FAST_CUDA must be 0, 1 or unset, got {choice!r}")
    return available


def _extension():
    _locate_cuda_home()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    def rel(pattern):
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(str(ROOT / pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    include_dirs = [str(ROOT / "csrc")]
    extra = {"cxx": list(FLAGS["cxx_flags"])}
    # -fopenmp: at::parallel_for is header code that only runs in parallel when the extension itself is built with
    # OpenMP; libgomp.so.1 then resolves to the copy torch has already loaded, so there is one thread pool.
    link = list(FLAGS.get("link_flags", []))
    if not _cuda_wanted():
        return CppExtension("gpt_fast._C", sources, include_dirs=include_dirs, extra_compile_args=extra,
                            extra_link_args=link)

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", FLAGS["cuda_arch_list"])
    # ATen's CUDA headers include cuBLAS/cuSPARSE headers, which the pip-installed toolkit keeps here.
    cu13 = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13" / "include"
    if cu13.is_dir():
        include_dirs.append(str(cu13))
    extra["cxx"].append("-DGPT_FAST_WITH_CUDA")
    extra["nvcc"] = list(FLAGS["nvcc_flags"]) + ["-DGPT_FAST_WITH_CUDA"]
    sources += rel("csrc/cuda/*.cu") + rel("csrc/cuda/*.cpp")
    return CUDAExtension("gpt_fast._C", sources, include_dirs=include_dirs, extra_compile_args=extra,
                         extra_link_args=link)


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


setup(ext_modules=[_extension()], cmdclass={"build_ext": _build_ext()})
