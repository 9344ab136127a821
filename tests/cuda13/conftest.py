"""The CUDA 13.0 images, as the workflow publishes them: every variant for linux/amd64 and, where aarch64 code
can run here, for linux/arm64 too, pushed to a real local registry as one multi-platform tag per variant.

Each platform's images are built by its own `build.py` run, once per test run (a host lock makes a second
worker wait, then find every step in the layer cache), so the amd64 images for test_devel and the arm64
ones for test_arm64 are built at the same time on two xdist workers. They are kept: the next run finds
them by content (a changed template, lock or file rebuilds what it changes).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytorch_cuda import hostlock, matrix, plan

from ..dockerutil import build_failure, build_py

CUDA = "13.0"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
VARIANT_ARGS = tuple(arg for variant in plan.VARIANTS for arg in ("--variant", variant))


def qemu_aarch64_missing() -> str:
    """Why aarch64 binaries cannot run here, or '' when they can."""
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        return "binfmt_misc has no qemu-aarch64 entry (bash .ci/run registers Debian's qemu-user-static)"
    text = entry.read_text()
    if "enabled" not in text.splitlines()[0]:
        return "binfmt_misc's qemu-aarch64 entry is disabled"
    if "F" not in next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags:")), ""):
        return "binfmt_misc's qemu-aarch64 entry lacks the F flag, so containers cannot find the emulator"
    return ""


def build_platform(platform: str, *extra: str) -> str:
    """`build.py --cuda 13.0 --platform P` of every variant, one worker at a time; returns its output."""
    with hostlock.held(f"tests-build-cuda{CUDA}-{plan.architecture_of(platform)}"):
        started = time.monotonic()
        result = build_py("--cuda", CUDA, "--platform", platform, *VARIANT_ARGS, "--no-alias", *extra, timeout=5400)
    assert result.returncode == 0, build_failure(result)
    print(f"\nbuild.py --cuda {CUDA} --platform {platform}: {time.monotonic() - started:.0f} s\n{result.stdout[-1200:]}")
    return result.stdout


def specs_of(real_matrix: matrix.Matrix, platforms: tuple[str, ...], registry: str | None = None
             ) -> dict[tuple[str, str], plan.ImageSpec]:
    build = real_matrix.resolve(cuda=CUDA)
    return {(spec.platform, spec.variant): spec for platform in platforms
            for spec in plan.image_specs(real_matrix, [build], variants=plan.VARIANTS, registry=registry,
                                         platform=platform)}


@pytest.fixture(scope="session")
def cuda13_amd64(docker_client, real_matrix) -> dict[str, plan.ImageSpec]:
    """variant -> spec of the four amd64 images of the CUDA 13.0 line."""
    build_platform(matrix.AMD64)
    return {variant: spec for (_, variant), spec in specs_of(real_matrix, (matrix.AMD64,)).items()}


@pytest.fixture(scope="session")
def cuda13(docker_client, real_matrix, registry) -> Iterator[dict]:
    """Both platforms' images, pushed with `build.py --platform linux/amd64,linux/arm64 --registry R --push`
    (every build step a cache hit by then) to the run's registry: one multi-platform tag per variant. That
    registry is kept between runs, so a run after one that pushed the same images uploads only manifests.
    Where aarch64 code cannot run here, `no_arm64` says why (the arm64 tests skip with it)."""
    no_arm64 = qemu_aarch64_missing()
    if no_arm64:
        yield {"no_arm64": no_arm64}
        return
    address, url, _ = registry
    prefix = f"{address}/cuda13"
    build_platform(matrix.ARM64)
    build_platform(matrix.AMD64)  # built by test_devel's worker meanwhile, or now
    started = time.monotonic()
    with hostlock.held(f"tests-push-cuda{CUDA}"):  # both arm64 workers push; the second finds every blob there
        result = build_py("--cuda", CUDA, "--platform", ",".join(matrix.PLATFORMS), *VARIANT_ARGS, "--no-alias",
                          "--registry", prefix, "--push", timeout=5400)
    assert result.returncode == 0, build_failure(result)
    print(f"\nboth platforms tagged and pushed in {time.monotonic() - started:.0f} s")
    specs = specs_of(real_matrix, matrix.PLATFORMS, prefix)
    yield {"specs": specs, "url": url, "prefix": prefix, "build": real_matrix.resolve(cuda=CUDA), "no_arm64": ""}
    # The names under the registry's address go when the run ends (conftest.py: two workers use them).
