"""Running built images: `verify` inside a container, and what the engine can run (GPU runtime)."""
from __future__ import annotations

import docker
import docker.errors
import docker.types
import requests.exceptions

from .errors import PytorchCudaError


def runtimes(client: docker.DockerClient) -> tuple[str, ...]:
    return tuple(sorted(client.info().get("Runtimes", {})))


def cdi_spec_dirs(client: docker.DockerClient) -> tuple[str, ...]:
    """Where the engine reads CDI specs (Docker >= 25 says so in `docker info`); () when it does not say."""
    return tuple(client.info().get("CDISpecDirs") or ())


def labels_of(client: docker.DockerClient, ref: str) -> dict[str, str]:
    try:
        return dict(client.api.inspect_image(ref)["Config"].get("Labels") or {})
    except docker.errors.ImageNotFound:
        raise PytorchCudaError(f"image {ref} is not here: build it (build.py) or pull it first") from None


def run_verify(client: docker.DockerClient, ref: str, timeout: int = 600) -> tuple[int, str]:
    """Run `verify` in a fresh container of `ref`: (exit code, its last output lines).

    With all GPUs when the engine has the nvidia runtime; otherwise on the CPU, where verify
    itself says which checks it had to skip.
    """
    gpus = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if "nvidia" in runtimes(client) else None
    box = client.containers.run(ref, ["--quiet"], entrypoint=["verify"], detach=True, device_requests=gpus,
                                shm_size="1g")
    try:
        try:
            code = box.wait(timeout=timeout)["StatusCode"]
        except requests.exceptions.RequestException:
            return 124, f"verify did not finish in {timeout} s"
        return code, box.logs().decode(errors="replace")
    finally:
        box.remove(force=True)
