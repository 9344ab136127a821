"""Push to a real registry (the run's, conftest.py) and pull by digest; the alias moves only after
verify passed."""
from __future__ import annotations

import contextlib

import docker.errors
import pytest
import requests

from .dockerutil import build_failure, build_py

pytestmark = [pytest.mark.docker, pytest.mark.release]

def test_push_verify_then_pull_by_digest(registry, built, docker_client, builds_here):
    address, url, _ = registry
    spec = built["runtime"]
    prefix = f"{address}/release"
    pushed = f"{prefix}/{spec.tag}"
    alias = f"{prefix}/{spec.aliases[0]}"
    digests: list[str] = []
    try:
        # Cache hits only; the --no-cache rebuild that could take its cache over runs before it on this
        # worker (the release group), so it does not hold up the other 12.1 builds while it pushes.
        result = build_py("--torch", spec.build.torch, "--cuda", spec.build.cuda, "--variant", "runtime",
                          "--registry", prefix, "--verify", "--push", timeout=2400)
        assert result.returncode == 0, build_failure(result)
        # --verify ran verify in the image, and its verdict is in the image's row of the summary table
        summary_row = next(line for line in result.stdout.splitlines() if line.startswith(pushed))
        assert "passed" in summary_row and f"pushing {pushed} {alias}" in result.stderr

        image = docker_client.images.get(pushed)
        digests = [d for d in image.attrs["RepoDigests"] if d.startswith(f"{prefix}/pytorch-cuda@")]
        assert digests, image.attrs["RepoDigests"]
        # The registry serves the tag and its alias as that manifest (the registry is kept between runs:
        # what an earlier run pushed under these names is replaced by this push).
        for name in (pushed, alias):
            served = requests.get(f"{url}/v2/release/pytorch-cuda/manifests/{name.rsplit(':', 1)[1]}", timeout=10,
                                  headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
            assert served.status_code == 200, served.text[:300]
            assert digests[0].endswith("@" + served.headers["Docker-Content-Digest"]), (name, served.headers)
        # Drop our names for it, then fetch it back by digest alone.
        docker_client.images.remove(pushed)
        docker_client.images.remove(alias)
        pulled = docker_client.images.pull(digests[0])
        assert pulled.id == image.id
        assert pulled.labels["io.pytorch-cuda.lock-digest"] == image.labels["io.pytorch-cuda.lock-digest"]
    finally:
        for ref in (pushed, alias, *digests):  # the digest reference the pull made, too
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(ref)
