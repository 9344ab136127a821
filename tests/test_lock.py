"""Locks: one lock serves every platform of a tag only while each platform resolves to the same pins."""
from __future__ import annotations

import pytest

from pytorch_cuda import lock, lockfile, matrix, plan
from pytorch_cuda.errors import PytorchCudaError

AMD64_LOCK = """torch==2.14.1 \\
    --hash=sha256:aa
triton==3.7.0 \\
    --hash=sha256:bb
"""


def _runtime_spec(cuda: str, variant: str = "runtime") -> plan.ImageSpec:
    m = matrix.load()
    return plan.image_specs(m, [m.resolve(cuda=cuda)], variants=(variant,))[0]


def test_the_difference_names_each_package_that_differs_with_both_versions():
    arm64_lock = "torch==2.14.1 \\\n    --hash=sha256:aa\nnvidia-nvshmem-cu13==3.4.5 \\\n    --hash=sha256:cc\n"
    message = lock.platform_difference("pytorch-cuda:2.14.1-cuda13.0-runtime", matrix.ARM64, AMD64_LOCK, arm64_lock)
    assert message == (
        "pytorch-cuda:2.14.1-cuda13.0-runtime: linux/amd64 and linux/arm64 resolve to different packages "
        "(nvidia-nvshmem-cu13 - vs 3.4.5; triton 3.7.0 vs -), and one lock serves both: build that tag for "
        "linux/amd64 only, or give it a lock per platform")
    assert "\n" not in message


def test_same_pins_with_other_hashes_is_still_a_difference():
    message = lock.platform_difference("t", matrix.ARM64, AMD64_LOCK, AMD64_LOCK.replace("sha256:bb", "sha256:dd"))
    assert "(same pins, other hashes)" in message


def test_a_release_with_arm64_wheels_is_resolved_for_both_platforms_and_must_agree(monkeypatch):
    asked = []

    def resolve(requirements, python, index_url, constraints=None, platform=matrix.AMD64):
        asked.append(platform)
        return AMD64_LOCK if platform == matrix.AMD64 else AMD64_LOCK.replace("triton==3.7.0", "triton==3.7.1")

    monkeypatch.setattr(lock, "compile_lock", resolve)
    with pytest.raises(PytorchCudaError, match=r"linux/arm64 resolve to different packages \(triton 3.7.0 vs 3.7.1\)"):
        lock.lock_text(_runtime_spec("13.0"), (), None)
    assert asked == [matrix.AMD64, matrix.ARM64]

    asked.clear()
    assert lock.lock_text(_runtime_spec("12.1"), (), None).endswith(AMD64_LOCK)
    assert asked == [matrix.AMD64]  # no arm64 wheels for CUDA 12 lines: nothing else to agree with


def test_the_newest_cuda_13_release_resolves_the_same_on_both_platforms_from_pypi():
    """uv against the real index (no image, no GPU): lock_text raises if aarch64 resolves otherwise."""
    spec = _runtime_spec("13.0")
    text = lock.lock_text(spec, (), None)
    assert lockfile.pins_of(text)["torch"] == spec.build.torch
    assert matrix.ARM64 in spec.build.platforms
    # JupyterLab, resolved against the runtime's lock, as `lock` does it.
    jupyter = _runtime_spec("13.0", "jupyter")
    text = lock.lock_text(jupyter, matrix.load().variant_packages["jupyter"], jupyter.runtime_lock)
    assert "jupyterlab" in lockfile.pins_of(text)
