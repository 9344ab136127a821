"""The CUDA 13.0 images, built once for this package's modules (test_arm64, test_devel) as the
workflow publishes them: every variant for linux/amd64 and, where aarch64 code can run here, for
linux/arm64 too, pushed to a real local registry as one multi-platform tag per variant.

Package scope: they are removed with their builder stages when the last test of this package is done,
before the rest of the suite builds its own (two platforms of four variants: about 25 GB).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytorch_cuda import matrix, plan

from ..dockerutil import build_failure, build_py, local_registry, removing_new_images

CUDA = "13.0"
BINFMT = Path("/proc/sys/fs/binfmt_misc")


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


@pytest.fixture(scope="package")
def cuda13(docker_client, real_matrix) -> Iterator[dict]:
    """`build.py --cuda 13.0 --platform linux/amd64,linux/arm64 --variant ... --registry ... --push`:
    the four variants for both platforms (amd64 alone where aarch64 code cannot run: `no_arm64`
    says why, and the arm64 tests skip with it)."""
    no_arm64 = qemu_aarch64_missing()
    platforms = (matrix.AMD64,) if no_arm64 else matrix.PLATFORMS
    # The registry first: on a machine that has built nothing yet it makes debian:bookworm-slim, which
    # the tests after this package use too; removing_new_images then removes only what build.py made.
    with local_registry(docker_client) as (address, url, _), removing_new_images(docker_client):
        prefix = f"{address}/team"
        variants = [arg for variant in plan.VARIANTS for arg in ("--variant", variant)]
        started = time.monotonic()
        result = build_py("--cuda", CUDA, "--platform", ",".join(platforms), *variants, "--no-alias",
                          "--registry", prefix, "--push", timeout=5400)
        seconds = time.monotonic() - started
        assert result.returncode == 0, build_failure(result)
        build = real_matrix.resolve(cuda=CUDA)
        specs = {(spec.platform, spec.variant): spec for platform in platforms
                 for spec in plan.image_specs(real_matrix, [build], variants=plan.VARIANTS, registry=prefix,
                                              platform=platform)}
        print(f"\nbuild.py: {len(specs)} images of {build.torch}-cuda{CUDA} ({', '.join(platforms)}) built and "
              f"pushed in {seconds:.0f} s:\n{result.stdout[-1500:]}")
        yield {"specs": specs, "url": url, "prefix": prefix, "build": build, "no_arm64": no_arm64}
