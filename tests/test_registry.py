"""Push to a real registry and pull by digest; the alias moves only after verify passed."""
from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import docker.errors
import pytest
import requests

from .dockerutil import build_py, container

pytestmark = [pytest.mark.docker, pytest.mark.release]

REGISTRY_IMAGE = "pytorch-cuda-test/registry:debian"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def registry(docker_client, built):
    """A registry on 127.0.0.1 (the engine trusts loopback registries over plain HTTP)."""
    docker_client.images.build(path=str(Path(__file__).parent / "registry"), tag=REGISTRY_IMAGE, rm=True,
                               forcerm=True, pull=False)
    port = _free_port()
    try:
        with container(docker_client, REGISTRY_IMAGE, ports={"5000/tcp": ("127.0.0.1", port)}) as box:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(f"{url}/v2/", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, box.logs().decode()
                time.sleep(0.5)
            yield f"127.0.0.1:{port}", url
    finally:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(REGISTRY_IMAGE, force=True)


def test_push_verify_then_pull_by_digest(registry, built, docker_client):
    address, url = registry
    spec = built["runtime"]
    prefix = f"{address}/team"
    pushed = f"{prefix}/{spec.tag}"
    alias = f"{prefix}/{spec.aliases[0]}"
    digests: list[str] = []
    try:
        result = build_py("--torch", spec.build.torch, "--cuda", spec.build.cuda, "--variant", "runtime",
                          "--registry", prefix, "--verify", "--push", timeout=2400)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "passed" in result.stdout and f"pushing {pushed} {alias}" in result.stderr

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
