"""Two tags that pin the same NVIDIA wheels share those layers, and a registry stores them once.

2.4.0 and 2.4.1 (CUDA 12.1) lock the same NVIDIA wheels, triton and other packages; only torch,
torchvision and torchaudio differ. Built here from PyPI's wheels, pushed to a real registry (the
run's shared one, kept between runs: what a second push adds is read from the two manifests, the
blobs the second lists that the first does not).
"""
from __future__ import annotations

import contextlib

import docker.errors
import pytest

from pytorch_cuda import plan

from .dockerutil import build_failure, build_py, manifest_blobs

pytestmark = [pytest.mark.docker, pytest.mark.release]

# The goal: the second tag's push uploads at most this share of the first's bytes.
SECOND_PUSH_SHARE = 0.35


def test_tags_with_the_same_nvidia_pins_share_layers_and_the_second_push_is_small(built, real_matrix, registry,
                                                                                 docker_client, builds_here):
    newer = built["runtime"]
    older = plan.image_specs(real_matrix, [real_matrix.resolve(cuda="12.1", torch="2.4.0")], variants=("runtime",))[0]
    assert dict(older.runtime_pins)["torch"] == "2.4.0" and dict(newer.runtime_pins)["torch"] == "2.4.1"
    nvidia = [layer for layer in newer.layer_plan if layer.comment.startswith("NVIDIA")]
    pushed: list[str] = []
    address, url, _ = registry
    # 2.4.0 stays, with its builder stage (about 7 GB), as every image a test builds: the next run's build is all
    # cache hits. Not one_build_at_a_time: 2.4.0 shares no cached step whose lookup another 12.1 build could take.
    try:
        result = build_py("--torch", "2.4.0", "--cuda", "12.1", "--variant", "runtime", "--no-alias",
                          timeout=2400)
        assert result.returncode == 0, build_failure(result)
        # The wheel cache: after 2.4.1, only the wheels whose pins differ are downloaded (none when
        # an earlier run left them in the cache).
        differing = {name for name, version in older.runtime_pins if dict(newer.runtime_pins).get(name) != version}
        [said] = [line for line in result.stderr.splitlines() if line.startswith("wheel cache: ") and "2.4.0" in line]
        downloaded = int(said.split(" downloaded")[0].rsplit(" ", 1)[-1])
        print(f"\n{said} (pins that differ from 2.4.1: {', '.join(sorted(differing))})")
        assert downloaded <= len(differing) < len(older.runtime_pins) / 4, said
        old_layers = docker_client.images.get(older.tag).attrs["RootFS"]["Layers"]
        new_layers = docker_client.images.get(newer.tag).attrs["RootFS"]["Layers"]
        # the base, the NVIDIA layers, triton, the other packages and the venv: the same bytes, and in the
        # same order, so a node holding one tag pulls none of them for the other; torch differs
        torch_at = 1 + [layer.packages for layer in newer.layer_plan].index(("torch", "torchvision", "torchaudio"))
        assert torch_at == 1 + len(nvidia) + 3  # the base, NVIDIA's, triton, every other package, the venv
        assert old_layers[:torch_at] == new_layers[:torch_at]
        assert old_layers[torch_at] != new_layers[torch_at]
        # above torch: the verify layer (this tag's manifest: differs), then Debian's (the system stage: same)
        assert old_layers[torch_at + 1] != new_layers[torch_at + 1]
        assert old_layers[torch_at + 2] == new_layers[torch_at + 2]

        # What the registry stores for the first tag, then what the second adds to it: the blobs of its
        # manifest that the first's lacks (a registry stores a blob once, by digest).
        for spec in (newer, older):
            ref = f"{address}/layers/{spec.tag}"
            docker_client.images.get(spec.tag).tag(ref)
            pushed.append(ref)
            for line in docker_client.images.push(ref, stream=True, decode=True):
                assert "error" not in line, line
        first_blobs, second_blobs = (manifest_blobs(url, "layers/pytorch-cuda", spec.tag.rsplit(":", 1)[1])
                                     for spec in (newer, older))
        first = sum(first_blobs.values())
        second = sum(size for digest, size in second_blobs.items() if digest not in first_blobs)
        print(f"\nfirst push ({newer.tag}): {first / 1e9:.2f} GB; second ({older.tag}): {second / 1e9:.2f} GB "
              f"= {second / first:.1%}")
        assert 0 < second <= SECOND_PUSH_SHARE * first
    finally:
        for ref in pushed:
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(ref)
