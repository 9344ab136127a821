"""Push to a real registry (the session's, conftest.py) and pull by digest; the alias moves only after
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
    prefix = f"{address}/team"
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

        tags = requests.get(f"{url}/v2/team/pytorch-cuda/tags/list", timeout=10).json()["tags"]
        assert sorted(tags) == sorted([pushed.rsplit(":", 1)[1], alias.rsplit(":", 1)[1]])

        image = docker_client.images.get(pushed)
        digests = [d for d in image.attrs["RepoDigests"] if d.startswith(f"{prefix}/pytorch-cuda@")]
        assert digests, image.attrs["RepoDigests"]
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
