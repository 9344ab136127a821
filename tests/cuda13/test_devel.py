"""The devel image of the CUDA 13.0 line, built for real from PyPI's NVIDIA wheels: CUDA extensions
compile in it as the image's user, with the compiler of torch's own CUDA. No GPU is needed to compile;
the kernels run only where one is (`gpu` marker).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pytorch_cuda import plan
from pytorch_cuda.engine import BuildEvents, DockerEngine, dockerfile_context
from pytorch_cuda.errors import BuildFailed

from ..clients import have_gpu
from ..dockerutil import removing_leftovers_of_builds, unique

pytestmark = pytest.mark.docker

DEVEL_CUDA = "13.0"
FIXTURE = Path(__file__).parent.parent / "fixtures" / "cuda_ext"

# The two torch extension builds are CPU-bound (about 60-80 s alone). A cold run starts them while the arm64
# images build under QEMU on the same 2 cores: there both were killed at 900 s (2026-12-06, fifth session),
# still compiling. The limit catches a hang, not a busy machine.
COMPILE_TIMEOUT_S = 1800

INLINE = r'''
import os, subprocess, torch
from torch.utils.cpp_extension import load_inline
# no_implicit_headers: each source names its own headers, as a user who wants fast JIT builds writes them.
# The kernel's .cu then holds no torch header, so nvcc's front ends parse a few lines, not ATen, once per
# arch; the binding (torch/extension.h, pybind11) is compiled once, by the C++ compiler.
binding = """
#include <torch/extension.h>
void launch_add_one(float *x, int64_t n);
torch::Tensor add_one(torch::Tensor x) {
    TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "a float32 CUDA tensor");
    launch_add_one(x.data_ptr<float>(), x.numel());
    return x;
}
"""
cuda = """
#include <cstdint>
__global__ void add_one_kernel(float *x, int64_t n) {
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1.0f;
}
void launch_add_one(float *x, int64_t n) {
    add_one_kernel<<<(n + 255) / 256, 256>>>(x, n);
}
"""
os.makedirs(os.environ["BUILD_DIR"], exist_ok=True)
module = load_inline("pcuda_inline", cpp_sources=binding, cuda_sources=cuda, functions=["add_one"],
                     build_directory=os.environ["BUILD_DIR"], no_implicit_headers=True)
print("built", module.__file__)
listing = subprocess.run(["cuobjdump", "--list-elf", module.__file__], capture_output=True, text=True, check=True)
print(listing.stdout)
if torch.cuda.is_available():
    x = torch.arange(1000, dtype=torch.float32, device="cuda")
    print("exact" if torch.equal(module.add_one(x).cpu(), torch.arange(1, 1001, dtype=torch.float32)) else "WRONG")
'''


@pytest.fixture(scope="module")
def devel(cuda13_amd64) -> dict[str, plan.ImageSpec]:
    """The CUDA 13.0 line's amd64 runtime and devel images (this package's conftest.py builds them)."""
    return {variant: cuda13_amd64[variant] for variant in ("runtime", "devel")}


def test_nvcc_is_torchs_cuda(devel, containers):
    code, out = containers.run(devel["devel"].tag, ["sh", "-c", "nvcc --version; python -c 'import torch; "
                                                    "print(\"torch cuda\", torch.version.cuda)'"])
    assert code == 0, out
    assert f"release {DEVEL_CUDA}," in out and f"torch cuda {DEVEL_CUDA}" in out, out


def test_load_inline_builds_sass_for_each_requested_arch(devel, containers):
    """TORCH_CUDA_ARCH_LIST 8.0;9.0;10.0 gives one cubin per arch; cuobjdump lists them."""
    code, out = containers.run(devel["devel"].tag, ["python", "-c", INLINE], timeout=COMPILE_TIMEOUT_S,
                               environment={"TORCH_CUDA_ARCH_LIST": "8.0;9.0;10.0", "BUILD_DIR": "/tmp/inline"})
    assert code == 0, out
    for sm in ("sm_80", "sm_90", "sm_100"):
        assert f".{sm}." in out or f"{sm}.cubin" in out, f"no SASS for {sm}:\n{out}"
    if have_gpu():
        assert "exact" in out


def test_a_cuda_extension_builds_with_pip_as_the_image_user(devel, containers):
    script = ("cp -r /fixture /tmp/ext && pip install --no-build-isolation --no-index --no-deps /tmp/ext && "
              "python -c 'import torch, pcuda_ext; print(\"imported\", pcuda_ext.scale_add_one.__doc__)' && whoami")
    code, out = containers.run(devel["devel"].tag, ["sh", "-c", script], timeout=COMPILE_TIMEOUT_S,
                               environment={"TORCH_CUDA_ARCH_LIST": "8.0"},
                               volumes={str(FIXTURE): {"bind": "/fixture", "mode": "ro"}})
    assert code == 0, out
    assert "Successfully installed pcuda-ext-0.1" in out and "y = a * x + 1, on the GPU" in out, out
    assert out.strip().splitlines()[-1] == "pytorch"


def test_verify_toolchain_passes_in_devel_and_skips_in_runtime(devel, containers):
    code, out = containers.run(devel["devel"].tag, ["verify", "--only", "toolchain"])
    assert code == 0 and "toolchain" in out and "compiled a kernel for sm_80" in out, out
    code, out = containers.run(devel["runtime"].tag, ["verify", "--only", "toolchain"])
    assert code == 0 and "not a devel image" in out, out


def test_devel_works_under_an_openshift_uid(devel, containers):
    """A random uid in group 0 with no passwd entry: the compiler check and torch.compile (CUDA 13's torch)."""
    code, out = containers.run(devel["devel"].tag, ["verify", "--only", "toolchain,compile"], user="12345:0",
                               timeout=600)
    assert code == 0, out
    assert "compiled a kernel for sm_80" in out and "as uid 12345" in out, out


def test_a_compiler_of_another_cuda_fails_the_build(devel, docker_client):
    """The devel image runs verify's toolchain check as a build step: a mismatch stops the build."""
    dockerfile = (f"FROM {devel['devel'].tag}\nUSER root\n"
                  "RUN printf '#!/bin/sh\\necho \"Cuda compilation tools, release 12.9, V12.9.86\"\\n' "
                  "> \"$CUDA_HOME/bin/nvcc\"\n"
                  "RUN verify --quiet --only toolchain\n")
    context = dockerfile_context(dockerfile)
    with removing_leftovers_of_builds(docker_client) as leftovers, pytest.raises(BuildFailed) as failed:
        DockerEngine(docker_client).build(f"pytorch-cuda-mismatch:{unique('t')}", context, "Dockerfile", {},
                                          events=BuildEvents(on_line=leftovers.saw))
    told = "\n".join(failed.value.log_tail)
    assert "nvcc is CUDA 12.9 but torch is built with CUDA 13.0" in told, told


def test_devel_shares_the_runtime_layers(devel, docker_client):
    runtime = docker_client.images.get(devel["runtime"].tag)
    image = docker_client.images.get(devel["devel"].tag)
    lower = runtime.attrs["RootFS"]["Layers"]
    assert image.attrs["RootFS"]["Layers"][: len(lower)] == lower
    added = image.attrs["Size"] - runtime.attrs["Size"]
    print(f"devel {image.attrs['Size'] / 1e9:.2f} GB = runtime {runtime.attrs['Size'] / 1e9:.2f} GB "
          f"+ {added / 1e6:.0f} MB")
    assert image.labels["io.pytorch-cuda.toolkit"].startswith(DEVEL_CUDA + ".")
