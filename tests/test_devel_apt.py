"""A CUDA 12 devel image takes nvcc from NVIDIA's apt repository, which cannot be reached here: the
build stops at once, naming it. It builds on the CUDA 12.1 runtime image the session builds (`built`).
"""
from __future__ import annotations

import pytest

from .dockerutil import build_py

pytestmark = pytest.mark.docker


def test_a_cuda_12_devel_without_nvidia_s_repository_stops_at_once_naming_it(built, docker_client, builds_here):
    """NVIDIA's apt repository cannot be reached here: the build fails in seconds with one line naming it."""
    result = build_py("--cuda", "12.1", "--variant", "devel", timeout=1800)
    assert result.returncode == 1
    said = result.stderr + result.stdout
    assert ("cannot reach NVIDIA's CUDA repository "
            "https://developer.download.nvidia.com/compute/cuda/repos/debian11/x86_64/") in said, said[-3000:]
    assert "NVIDIA_CUDA_REPO" in said
    assert not docker_client.images.list(name="pytorch-cuda:2.4.1-cuda12.1-devel")
