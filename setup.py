"""Build of ``robustkernels._C`` (C++ always; CUDA when available), following pytorch/extension-cpp.

Environment:
    ROBUSTKERNELS_CUDA=1 / 0   force the CUDA sources on / off (default: on when torch has CUDA
                               and a CUDA toolkit is found).
    ROBUSTKERNELS_NO_EXT=1     skip the extension entirely (the package works with the torch
                               and Triton backends).
    TORCH_CUDA_ARCH_LIST       default "8.0;9.0" (A100, H100/H200).
    DEBUG=1                    -O0 -g.

On x86-64 the CPU kernels are compiled for AVX2 + FMA (ATen's Vectorized<float> with 8 lanes and
Sleef exp/log); robustkernels.native loads the extension only on a CPU that has them.
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _toolkit_from_nvcc() -> str | None:
    """CUDA toolkit folder from ``nvcc --dryrun`` (robust to wrapper scripts on the PATH, for
    which torch's guess -- the parent of the nvcc folder -- is wrong)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return os.path.realpath(match.group(1).strip()) if match else None


if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
    toolkit = _toolkit_from_nvcc()
    if toolkit and os.path.isdir(os.path.join(toolkit, "include")):
        os.environ["CUDA_HOME"] = toolkit
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402  (CUDA_HOME must be set before cpp_extension reads it)
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _wheel_cuda_includes() -> list[str]:
    """cuBLAS/cuSPARSE headers that ATen's CUDA headers include, from the nvidia pip wheels."""
    site = sysconfig.get_paths()["purelib"]
    found = []
    for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
        for path in sorted(glob.glob(os.path.join(site, pattern))):
            if os.path.exists(os.path.join(path, "cublas_v2.h")) or os.path.exists(os.path.join(path, "cusparse.h")):
                found.append(path)
    return found


def _use_cuda() -> bool:
    flag = os.environ.get("ROBUSTKERNELS_CUDA")
    if flag is not None:
        return flag == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def extensions():
    if os.environ.get("ROBUSTKERNELS_NO_EXT") == "1":
        return []
    debug = os.environ.get("DEBUG") == "1"
    use_cuda = _use_cuda()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # -fopenmp: at::parallel_for is inline and runs serially unless the extension itself is
    # compiled with OpenMP (ATen/ParallelOpenMP.h is guarded by _OPENMP).
    cxx += ["-fdiagnostics-color=always", "-Wno-unknown-pragmas", "-fopenmp"]  # vec headers: #pragma unroll
    if platform.machine().lower() in ("x86_64", "amd64"):
        # Selects ATen's AVX2 Vectorized specialisations (inline namespace at::vec::AVX2).
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    extra = {"cxx": cxx}
    include_dirs = [os.path.join(ROOT, "csrc")]
    if use_cuda:
        if CUDA_HOME is None:
            sys.exit("ROBUSTKERNELS_CUDA=1 but no CUDA toolkit found: set CUDA_HOME")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        extra["nvcc"] = (["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]) + [
            "--expt-relaxed-constexpr",
        ]
        include_dirs += _wheel_cuda_includes()
        cxx.append("-DROBUSTKERNELS_WITH_CUDA")
        extra["nvcc"].append("-DROBUSTKERNELS_WITH_CUDA")
    ext_cls = CUDAExtension if use_cuda else CppExtension
    return [
        ext_cls(
            "robustkernels._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    packages=find_packages(include=["robustkernels", "robustkernels.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
