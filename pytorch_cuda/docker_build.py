"""Building through the Docker SDK: build context, streaming classic build, tagging, pushing.

The SDK drives the classic builder (it has no BuildKit), through the low-level streaming API so
that progress shows live and a failure carries its step and the tail of the log.
"""
from __future__ import annotations

import io
import logging
import re
import tarfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import docker
import docker.errors
import requests.exceptions

from .errors import BuildFailed, DockerUnavailable, PushFailed
from .matrix import REPO_ROOT

log = logging.getLogger(__name__)

# What every image's build context holds besides its Dockerfile and manifest.
CONTEXT_DIRS = ("verify", "image-files")
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ARG = re.compile(r"^ARG ([A-Za-z_][A-Za-z0-9_]*)", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the builder colours a step's stderr
LOG_TAIL_LINES = 30


def connect(timeout: int = 600) -> docker.DockerClient:
    """A client that has answered a ping, or DockerUnavailable saying what to do."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except (docker.errors.DockerException, requests.exceptions.RequestException) as err:
        reason = str(err).split("(")[0].strip() or type(err).__name__
        raise DockerUnavailable(
            f"cannot reach the Docker daemon ({reason}): start it (e.g. `sudo systemctl start docker` or `dockerd &`) "
            f"or set DOCKER_HOST; --dry-run and --list work without it"
        ) from None


def declared_args(dockerfile: str) -> set[str]:
    """The ARG names a Dockerfile declares; only those are passed, so the builder warns of none."""
    return set(_ARG.findall(dockerfile))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def make_context(files: dict[str, bytes], repo_root: Path = REPO_ROOT) -> io.BytesIO:
    """A deterministic tar: the given files plus CONTEXT_DIRS from the repository.

    Fixed mtimes and owners keep COPY's cache keys stable between checkouts.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in sorted(files):
            _add_bytes(tar, name, files[name])
        for directory in CONTEXT_DIRS:
            for path in sorted((repo_root / directory).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
                    _add_bytes(tar, path.relative_to(repo_root).as_posix(), path.read_bytes(), mode)
    buffer.seek(0)
    return buffer


@dataclass
class BuildEvents:
    """Callbacks the progress display gives the build loop."""

    on_step: Callable[[int, int, str], None] = lambda n, total, text: None
    on_line: Callable[[str], None] = lambda line: None


def build_image(
    client: docker.DockerClient,
    tag: str,
    context: io.BytesIO,
    dockerfile_path: str,
    buildargs: dict[str, str],
    nocache: bool = False,
    labels: dict[str, str] | None = None,
    events: BuildEvents | None = None,
) -> str:
    """Build and return the image ID; the image is left untagged (tagging is the caller's step)."""
    events = events or BuildEvents()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    step, image_id = "", None
    try:
        stream = client.api.build(
            fileobj=context,
            custom_context=True,
            dockerfile=dockerfile_path,
            buildargs=buildargs,
            nocache=nocache,
            rm=True,
            forcerm=True,  # no stopped containers left behind by a failed step
            pull=False,
            labels=labels or {},
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                message = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                raise BuildFailed(tag, step, _one_line(message), list(tail))
            text = chunk.get("stream", "")
            for line in _ANSI.sub("", text).splitlines():
                line = line.rstrip()
                if not line:
                    continue
                tail.append(line)
                match = _STEP.match(line)
                if match:
                    step = f"step {match.group(1)}/{match.group(2)} ({_one_line(match.group(3))[:60]})"
                    events.on_step(int(match.group(1)), int(match.group(2)), match.group(3))
                else:
                    events.on_line(line)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and "ID" in aux:
                image_id = aux["ID"]
    except (docker.errors.APIError, requests.exceptions.RequestException) as err:
        raise BuildFailed(tag, step, _one_line(str(err)), list(tail)) from None
    if image_id is None:
        raise BuildFailed(tag, step, "the builder ended without producing an image", list(tail))
    return image_id


def _one_line(text: str) -> str:
    return " ".join(text.split())


def split_ref(ref: str) -> tuple[str, str]:
    """'registry:5000/pytorch-cuda:2.4.1-x' -> ('registry:5000/pytorch-cuda', '2.4.1-x')."""
    repository, _, tag = ref.rpartition(":")
    if "/" in tag or not repository:
        return ref, "latest"
    return repository, tag


def tag_image(client: docker.DockerClient, image_id: str, refs: Iterable[str]) -> None:
    for ref in refs:
        repository, tag = split_ref(ref)
        client.api.tag(image_id, repository, tag, force=True)


def push(client: docker.DockerClient, refs: Iterable[str]) -> None:
    """Push each ref; the registry's refusal becomes PushFailed with its message."""
    for ref in refs:
        repository, tag = split_ref(ref)
        try:
            for chunk in client.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise PushFailed(f"push of {ref} failed: {_one_line(chunk['error'])}")
        except (docker.errors.APIError, requests.exceptions.RequestException) as err:
            raise PushFailed(f"push of {ref} failed: {_one_line(str(err))}") from None


def image_size(client: docker.DockerClient, ref: str) -> int:
    return int(client.api.inspect_image(ref)["Size"])
