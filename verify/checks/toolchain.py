"""toolchain (devel images): nvcc is there, is torch's CUDA, compiles a kernel, and on a GPU the kernel runs.

A CUDA extension (flash-attn, apex, your own op) built with another toolkit than torch's fails to
load or misbehaves, so the release nvcc reports must be torch.version.cuda's major.minor. The kernel
is compiled for the first GPU's architecture (sm_80 without a GPU) into a small program that the
CUDA runtime links against, the way torch.utils.cpp_extension links an extension; on a GPU it runs
and its answer is checked exactly.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Optional, Tuple

import torch

from verify import archs
from verify.checks._common import gpu_missing_reason
from verify.context import CheckContext
from verify.result import Findings, Outcome, Status

ELEMENTS = 1 << 16
KERNEL = r"""
#include <cstdio>
#include <cuda_runtime.h>

__global__ void add_index(long long *out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = 2LL * i + 1;
}

int main() {
    const int n = %(n)d;
    long long *device = nullptr, *host = new long long[n];
    if (cudaMalloc(&device, n * sizeof(long long)) != cudaSuccess) { std::printf("no-device\n"); return 3; }
    add_index<<<(n + 255) / 256, 256>>>(device, n);
    cudaError_t launched = cudaGetLastError();
    cudaMemcpy(host, device, n * sizeof(long long), cudaMemcpyDeviceToHost);
    long long sum = 0;
    for (int i = 0; i < n; ++i) sum += host[i];
    std::printf("%%s sum=%%lld\n", cudaGetErrorString(launched), sum);
    return launched == cudaSuccess ? 0 : 4;
}
"""
NVCC_TIMEOUT_S = 240


def nvcc_release(text: str) -> Optional[str]:
    """'Cuda compilation tools, release 13.0, V13.0.88' -> '13.0'."""
    match = re.search(r"release (\d+\.\d+)", text)
    return match.group(1) if match else None


def find_nvcc() -> Optional[str]:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _compile(nvcc: str, sm: str, workdir: str) -> Tuple[bool, str]:
    source = os.path.join(workdir, "add_index.cu")
    with open(source, "w", encoding="utf-8") as handle:
        handle.write(KERNEL % {"n": ELEMENTS})
    done = subprocess.run([nvcc, f"-arch={sm}", "-o", os.path.join(workdir, "add_index"), source],
                          capture_output=True, text=True, timeout=NVCC_TIMEOUT_S)
    output = (done.stderr or done.stdout).strip()
    return done.returncode == 0, output.splitlines()[-1] if output else f"exit {done.returncode}"


def run(ctx: CheckContext) -> Outcome:
    toolkit = ctx.manifest.toolkit if ctx.manifest else None
    nvcc = find_nvcc()
    if not toolkit and nvcc is None:
        return Outcome(Status.SKIP, "not a devel image: no CUDA compiler here (the -devel tag has one)", {},
                       "no nvcc")
    found = Findings()
    found.figures.update({"nvcc": nvcc, "manifest_toolkit": toolkit, "torch_cuda": torch.version.cuda,
                          "CUDA_HOME": os.environ.get("CUDA_HOME"),
                          "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST")})
    if nvcc is None:
        found.fail(f"the image promises CUDA compiler {toolkit} but nvcc is neither in $CUDA_HOME/bin nor on PATH")
        return found.outcome("")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    release = nvcc_release(version.stdout)
    found.figures["nvcc_release"] = release
    found.key_figure = f"nvcc {release or '?'}"
    if torch.version.cuda is None and not toolkit:  # a host with nvcc and CPU torch: nothing to match
        return Outcome(Status.SKIP, f"torch {torch.__version__} is a CPU build: nvcc {release} has no CUDA torch to "
                                    "build extensions for", found.figures, found.key_figure)
    if torch.version.cuda is None:
        found.fail(f"torch {torch.__version__} is a CPU build: nvcc {release} has no CUDA torch to build for")
    elif release is None:
        found.fail(f"`{nvcc} --version` says no release: {(version.stdout or version.stderr).strip()[:200]}")
    elif release != ".".join(torch.version.cuda.split(".")[:2]):
        found.fail(f"nvcc is CUDA {release} but torch is built with CUDA {torch.version.cuda}: extensions built "
                   f"here would not match torch; use the compiler of CUDA {torch.version.cuda}")
    if found.failed:
        return found.outcome("")

    missing = gpu_missing_reason()
    sm = "sm_80" if missing else archs.sm_name(*torch.cuda.get_device_capability(0))
    found.figures["arch"] = sm
    workdir = tempfile.mkdtemp(prefix="verify-toolchain-")
    try:
        compiled, said = _compile(nvcc, sm, workdir)
        if not compiled:
            found.fail(f"nvcc could not compile a one-kernel program for {sm}: {said}")
            return found.outcome("")
        if missing:
            if ctx.require_gpu:
                found.fail(f"compiled for {sm}, not run: {missing} (--require-gpu)")
                return found.outcome("")
            return found.outcome(f"nvcc {release} matches torch's CUDA {torch.version.cuda}; compiled a kernel for "
                                 f"{sm}; not run: {missing}")
        ran = subprocess.run([os.path.join(workdir, "add_index")], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    expected = ELEMENTS * ELEMENTS  # sum of 2i+1 for i < n
    found.figures["kernel_output"] = ran.stdout.strip()
    if ran.returncode != 0 or f"sum={expected}" not in ran.stdout:
        found.fail(f"the kernel compiled for {sm} did not give the exact answer (expected sum={expected}): "
                   f"{(ran.stdout or ran.stderr).strip()[:200]} (exit {ran.returncode})")
        return found.outcome("")
    return found.outcome(f"nvcc {release} matches torch's CUDA {torch.version.cuda}; a kernel compiled for {sm} "
                         f"ran on the GPU with the exact answer")
