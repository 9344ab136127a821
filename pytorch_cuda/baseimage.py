"""Base images for air-gapped sites: use the local one, else pull, else make it from Debian packages.

A Debian base image is a minbase root filesystem; mmdebstrap (or debootstrap) makes the same from
a Debian mirror, which offline clusters usually carry, and `docker import` names it as a user would
pull it, so the rendered Dockerfiles need no change.
"""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import docker
import docker.errors
import requests.exceptions

from .errors import BaseImageError

log = logging.getLogger(__name__)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
_DEBIAN = re.compile(r"^(?:docker\.io/)?(?:library/)?debian:(?P<suite>[a-z]+)(?P<slim>-slim)?$")
# What Debian's own -slim images leave out.
SLIM_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)


def debian_suite(image: str) -> str | None:
    """'debian:bookworm-slim' -> 'bookworm'; None for images we cannot make."""
    match = _DEBIAN.match(image)
    return match.group("suite") if match else None


def exists_locally(client: docker.DockerClient, image: str) -> bool:
    try:
        client.api.inspect_image(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def try_pull(client: docker.DockerClient, image: str) -> str | None:
    """Pull `image`; None on success, else the registry's reason in one line."""
    repository, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    try:
        client.api.pull(repository, tag=tag or "latest")
        return None
    except (docker.errors.APIError, requests.exceptions.RequestException) as err:
        return " ".join(str(err).split())[:200]


def bootstrap_command(suite: str, slim: bool, mirror: str, output: Path) -> list[str]:
    """The command that writes a minbase root filesystem tarball for `suite` to `output`."""
    if shutil.which("mmdebstrap"):
        command = ["mmdebstrap", "--variant=minbase", "--quiet"]
        if slim:
            command += [f"--dpkgopt={opt}" for opt in SLIM_EXCLUDES]
        # apt's package lists are not part of a Debian base image.
        command += ["--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/*", suite, str(output), mirror]
        return command
    if shutil.which("debootstrap"):
        # debootstrap writes a directory; the caller tars it.
        return ["debootstrap", "--variant=minbase", suite, str(output), mirror]
    raise BaseImageError(
        "cannot make a base image offline: install mmdebstrap or debootstrap (apt-get install mmdebstrap), "
        "or `docker load` the base image"
    )


def make_debian_image(
    client: docker.DockerClient, image: str, mirror: str = DEFAULT_MIRROR, say: Callable[[str], None] = print
) -> None:
    """Make `image` (debian:<suite>[-slim]) from Debian packages and import it under that name."""
    suite = debian_suite(image)
    if suite is None:
        raise BaseImageError(
            f"base image {image} is not here and cannot be pulled, and only debian:<suite>[-slim] "
            f"images can be made offline: `docker load` it, or pass --base debian:bookworm-slim"
        )
    slim = image.endswith("-slim")
    with tempfile.TemporaryDirectory(prefix="pytorch-cuda-base-") as tmp:
        target = Path(tmp) / "rootfs.tar"
        command = bootstrap_command(suite, slim, mirror, target)
        say(f"making {image} from Debian packages ({command[0]} {suite}, {mirror})")
        if command[0] == "debootstrap":
            rootfs = Path(tmp) / "rootfs"
            command[-2] = str(rootfs)
            _run(command, image)
            shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
            _run(["tar", "-C", str(rootfs), "-cf", str(target), "."], image)
        else:
            _run(command, image)
        repository, _, tag = image.rpartition(":")
        with open(target, "rb") as stream:
            client.api.import_image_from_stream(stream, repository=repository, tag=tag, changes=['CMD ["bash"]'])
    if not exists_locally(client, image):
        raise BaseImageError(f"imported {image} but the daemon does not list it")


def _run(command: list[str], image: str) -> None:
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        last = (result.stdout.strip().splitlines() or ["no output"])[-1]
        raise BaseImageError(f"making {image} with {command[0]} failed (exit {result.returncode}): {last}")


def ensure_base_image(
    client: docker.DockerClient,
    image: str,
    make: bool = False,
    mirror: str = DEFAULT_MIRROR,
    say: Callable[[str], None] = print,
) -> str:
    """Have `image` locally; returns how: 'local', 'pulled' or 'made'.

    `make=True` builds it from Debian packages even when a copy exists (--bootstrap-base).
    """
    if not make and exists_locally(client, image):
        return "local"
    if not make:
        reason = try_pull(client, image)
        if reason is None:
            return "pulled"
        say(f"could not pull {image} ({reason}); making it locally instead")
    make_debian_image(client, image, mirror, say)
    return "made"
