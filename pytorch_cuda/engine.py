"""The Docker engine, and the only module that imports the Docker SDK.

`Engine` is what the pipeline, preflight and the base-image maker ask of a container engine;
`DockerEngine` does it through docker-py. The SDK drives the classic builder (it has no BuildKit),
through the low-level streaming API, so that progress shows live and a failure carries its step
and the tail of the log. The SDK has no multi-platform indexes: those alone go through the docker
CLI (create_index, index_platforms). Tests of the pipeline's and the release's rules use a fake
Engine; real builds stay real.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

import docker
import docker.errors
import docker.types
import requests.exceptions

from . import refs
from .errors import BaseImageError, BuildFailed, DockerUnavailable, PushFailed, PytorchCudaError, RegistryError
from .plan import VERIFY_SHM_GIB

log = logging.getLogger(__name__)

# A step as the builder announces it: Docker's classic builder says "Step 3/8 : RUN ...", Podman's
# Docker-compatible API (Buildah) "STEP 3/8: RUN ...".
_STEP = re.compile(r"^(?:Step|STEP) (\d+)/(\d+) ?: (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the builder colours a step's stderr
# A failure quotes the whole RUN command (kilobytes for the pip step); the step is already named, so
# only its exit code is worth a line. Docker: "The command '/bin/sh -c ...' returned a non-zero code: 1";
# Podman: 'building at STEP "RUN ...": while running runtime: exit status 1'.
_FAILED_COMMAND = re.compile(r"^The command .* returned a non-zero code: (\d+)$", re.DOTALL)
_PODMAN_STEP_FAILED = 'building at STEP "'
_PODMAN_EXIT = re.compile(r"^(?:building at STEP \".*\": )?while running runtime: exit status (\d+)$", re.DOTALL)
_OUR_ERROR = "pytorch-cuda: error: "  # how the templates' own checks stop a step
LOG_TAIL_LINES = 30
# The two docker CLI tools that make a multi-platform index in a registry (the SDK has none): buildx's
# imagetools where the plugin is installed (it copies an index whole, BuildKit's attestations included),
# else `docker manifest`, which every docker CLI has.
IMAGETOOLS, MANIFEST = "docker buildx imagetools", "docker manifest"


@dataclass
class BuildEvents:
    """Callbacks the progress display gives the build loop."""

    on_step: Callable[[int, int, str], None] = lambda n, total, text: None
    on_line: Callable[[str], None] = lambda line: None


class Engine(Protocol):
    def build(self, tag: str, context: io.BytesIO, dockerfile_path: str, buildargs: dict[str, str],
              nocache: bool = False, labels: dict[str, str] | None = None,
              events: BuildEvents | None = None, host_network: bool = False,
              cpu_shares: int | None = None, target: str | None = None) -> str: ...
    def reaches_host_loopback(self) -> bool: ...
    def tag(self, image_id: str, references: Iterable[str]) -> None: ...
    def push(self, references: Iterable[str]) -> None: ...
    def create_index(self, reference: str, sources: Sequence[str]) -> None: ...
    def index_platforms(self, reference: str) -> tuple[str, ...] | None: ...
    def repo_digest(self, reference: str) -> str | None: ...
    def image_size(self, reference: str) -> int: ...
    def labels(self, reference: str) -> dict[str, str]: ...
    def exists(self, reference: str) -> bool: ...
    def pull(self, reference: str) -> str | None: ...
    def import_rootfs(self, tarball: str, reference: str) -> None: ...
    def load_archive(self, archive: str) -> None: ...
    def architecture(self, reference: str) -> str: ...
    def runtimes(self) -> tuple[str, ...]: ...
    def cdi_spec_dirs(self) -> tuple[str, ...]: ...
    def run_verify(self, reference: str, timeout: int = 600) -> tuple[int, str]: ...
    def read_file(self, reference: str, path: str) -> bytes | None: ...
    def run_script(self, reference: str, script: str, timeout: int = 600) -> tuple[int, str]: ...
    def relabel(self, image_id: str, labels: dict[str, str]) -> str: ...


# Registries the engine reaches over plain HTTP without configuration.
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def parse_step(line: str) -> tuple[int, int, str] | None:
    """(number, total, instruction) of a line that announces a build step, from Docker or Podman; else None."""
    match = _STEP.match(line)
    return (int(match.group(1)), int(match.group(2)), match.group(3)) if match else None


def failure_message(message: str, tail: Iterable[str] = ()) -> str:
    """A failed step told in one short line. Our own steps' words come first ('pytorch-cuda: error:
    ...' at the start of a line: the step's echoed command also holds the text, mid-line); else the
    builder's error, where a failed RUN becomes its exit code rather than its whole command, and
    Podman's quote of the step (already named) is left out."""
    tail = list(tail)
    said = [line.strip()[len(_OUR_ERROR):] for line in tail if line.strip().startswith(_OUR_ERROR)]
    if said:
        return said[-1]
    message = message.strip()
    failed = _FAILED_COMMAND.match(message) or _PODMAN_EXIT.match(message)
    if failed:
        return f"its command exited with code {failed.group(1)}"
    if message.startswith(_PODMAN_STEP_FAILED):
        steps = [step for step in map(parse_step, tail) if step is not None]
        quoted = f'{_PODMAN_STEP_FAILED}{steps[-1][2]}": ' if steps else None
        if quoted and message.startswith(quoted):
            message = message[len(quoted):]
    return _one_line(message)


def loopback_reachable(docker_host: str, info: dict[str, Any], platform: str) -> bool:
    """Whether the engine's builds with host networking see this machine's 127.0.0.1 (where the wheel
    cache serves), from DOCKER_HOST, the engine's `info` and this client's sys.platform: a local, rootful
    engine on Linux (Docker, or Podman, whose Docker-compatible builds run in the host's network anyway).
    A remote engine, a rootless one (its own network namespace), or an engine in a VM (Docker Desktop;
    Podman machine, Colima and the like, wherever this client is not on Linux) does not."""
    if docker_host and not docker_host.startswith("unix://"):
        return False
    rootless = any("rootless" in str(option) for option in info.get("SecurityOptions") or ())
    return (platform.startswith("linux") and info.get("OSType") == "linux" and not rootless
            and "Desktop" not in str(info.get("OperatingSystem")))


def listed_platforms(raw: str) -> tuple[str, ...] | None:
    """The platforms ('linux/arm64') a registry's manifest JSON lists when it is an index, in its order;
    None when it is one image's manifest. BuildKit's attestation manifests ('unknown/unknown') are no platform."""
    document = json.loads(raw)
    manifests = document.get("manifests") if isinstance(document, dict) else None
    if manifests is None:
        return None
    listed = []
    for manifest in manifests:
        platform = manifest.get("platform") or {}
        system, architecture = platform.get("os"), platform.get("architecture")
        if system and architecture and system != "unknown":
            listed.append(f"{system}/{architecture}")
    return tuple(listed)


def docker_cli(arguments: list[str], what: str, error: type[RegistryError] = RegistryError, timeout: int = 600) -> str:
    """Run the docker CLI (its credentials are `docker login`'s, as for a push): its stdout, else `error` in one line."""
    environment = {**os.environ, "DOCKER_CLI_EXPERIMENTAL": "enabled"}  # `docker manifest` before Docker 20.10
    shown = " ".join(arguments[:3] if arguments[0] == "buildx" else arguments[:2])  # the command, not its names
    try:
        done = subprocess.run(["docker", *arguments], capture_output=True, text=True, env=environment, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as err:
        raise error(f"{what}: `docker {shown}` failed: {_one_line(str(err))[:200]}") from None
    if done.returncode != 0:
        raise error(f"{what}: `docker {shown}` failed: {_one_line(done.stderr or done.stdout)[:200]}")
    return done.stdout


def index_tool() -> str:
    """IMAGETOOLS where the docker CLI has buildx, else MANIFEST."""
    try:
        found = subprocess.run(["docker", "buildx", "version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return MANIFEST
    return IMAGETOOLS if found.returncode == 0 else MANIFEST


def imported_id(answer: str | bytes) -> str | None:
    """The image ID an import answered with ('{"status":"sha256:..."}', from Docker and Podman alike); None
    if it named none."""
    text = answer.decode(errors="replace") if isinstance(answer, bytes) else str(answer)
    for line in reversed(text.strip().splitlines()):
        try:
            said = json.loads(line)
        except ValueError:
            continue
        status = str(said.get("status") or "") if isinstance(said, dict) else ""
        if status.startswith("sha256:"):
            return status
    return None


def stream_error(chunks: Iterable[dict[str, Any]]) -> str | None:
    """The first error a decoded JSON progress stream (pull, push, load) reports, in one line; None if it
    reports none. Docker answers some failures with an HTTP error, others (and Podman most) in the stream."""
    for chunk in chunks:
        if isinstance(chunk, dict) and chunk.get("error"):
            detail = chunk.get("errorDetail")
            message = detail.get("message") if isinstance(detail, dict) else None
            return _one_line(str(message or chunk["error"]))
    return None


class DockerEngine:
    """A Docker daemon through docker-py; made by connect(), which has checked that it answers."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self._index_tool = ""  # IMAGETOOLS or MANIFEST, found at the first index asked for

    def build(self, tag: str, context: io.BytesIO, dockerfile_path: str, buildargs: dict[str, str],
              nocache: bool = False, labels: dict[str, str] | None = None,
              events: BuildEvents | None = None, host_network: bool = False,
              cpu_shares: int | None = None, target: str | None = None) -> str:
        """Build and return the image ID; the image is left untagged (tagging is the caller's step).
        `target`: build only up to that stage (and the stages above it in the file), as docker build --target.

        `host_network`: RUN steps share the host's network (the wheel cache serves on its loopback);
        the network a step ran on is not part of the layer cache's key. `cpu_shares`: the RUN steps'
        CPU weight beside other containers (docker build --cpu-shares; the engine's default is 1024);
        like the network, not part of the cache's key."""
        events = events or BuildEvents()
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        step, image_id = "", None
        try:
            stream = self.client.api.build(
                fileobj=context, custom_context=True, dockerfile=dockerfile_path, buildargs=buildargs,
                nocache=nocache, rm=True,
                forcerm=True,  # no stopped containers left behind by a failed step
                pull=False, labels=labels or {}, decode=True,
                network_mode="host" if host_network else None,
                container_limits={"cpushares": cpu_shares} if cpu_shares else None,
                target=target,
            )
            for chunk in stream:
                if "error" in chunk:
                    message = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    raise BuildFailed(tag, step, failure_message(message, tail), list(tail))
                for line in _ANSI.sub("", chunk.get("stream", "")).splitlines():
                    line = line.rstrip()
                    if not line:
                        continue
                    tail.append(line)
                    announced = parse_step(line)
                    if announced:
                        number, total, instruction = announced
                        step = f"step {number}/{total} ({_one_line(instruction)[:60]})"
                        events.on_step(number, total, instruction)
                    else:
                        events.on_line(line)
                aux = chunk.get("aux")
                if isinstance(aux, dict) and "ID" in aux:
                    image_id = str(aux["ID"])
        except (docker.errors.APIError, requests.exceptions.RequestException) as err:
            raise BuildFailed(tag, step, _one_line(str(err)), list(tail)) from None
        if image_id is None:
            raise BuildFailed(tag, step, "the builder ended without producing an image", list(tail))
        return image_id

    def reaches_host_loopback(self) -> bool:
        """Whether a build with host networking sees this machine's 127.0.0.1 (see loopback_reachable)."""
        try:
            info = self.client.info()
        except (docker.errors.APIError, requests.exceptions.RequestException):
            return False
        return loopback_reachable(os.environ.get("DOCKER_HOST", ""), info, sys.platform)

    def tag(self, image_id: str, references: Iterable[str]) -> None:
        for reference in references:
            repository, tag = refs.split(reference)
            self.client.api.tag(image_id, repository, tag, force=True)

    def push(self, references: Iterable[str]) -> None:
        """Push each reference; the registry's refusal becomes PushFailed with its message."""
        for reference in references:
            repository, tag = refs.split(reference)
            try:
                said = stream_error(self.client.api.push(repository, tag=tag, stream=True, decode=True))
            except (docker.errors.APIError, requests.exceptions.RequestException) as err:
                raise PushFailed(f"push of {reference} failed: {_one_line(str(err))}") from None
            if said:
                raise PushFailed(f"push of {reference} failed: {said}")

    def index_tool(self) -> str:
        """Which docker CLI tool makes indexes here (said under -v: build.py's logging at INFO)."""
        if not self._index_tool:
            self._index_tool = index_tool()
            log.info("registry indexes through `%s`%s", self._index_tool,
                     "" if self._index_tool == IMAGETOOLS else " (the docker CLI here has no buildx)")
        return self._index_tool

    def _insecure(self, reference: str) -> list[str]:
        """`docker manifest` speaks plain HTTP to a loopback registry only when told, as the engine does unasked."""
        return ["--insecure"] if refs.registry_host(reference) in _LOOPBACK else []

    def _raw_manifest(self, reference: str, what: str = "", error: type[RegistryError] = RegistryError) -> str:
        what = what or f"{reference} in its registry"
        if self.index_tool() == IMAGETOOLS:
            return docker_cli(["buildx", "imagetools", "inspect", "--raw", reference], what, error)
        return docker_cli(["manifest", "inspect", *self._insecure(reference), reference], what, error)

    def index_platforms(self, reference: str) -> tuple[str, ...] | None:
        """The platforms the index `reference` lists in its registry; None when it names one image. A
        reference the registry does not hold is a RegistryError."""
        return listed_platforms(self._raw_manifest(reference))

    def create_index(self, reference: str, sources: Sequence[str]) -> None:
        """Make `reference` in its registry an index of the images of `sources`, which are there already; a
        source that is an index gives its images, so an index made of one index is a copy of it.

        The Docker SDK has no indexes; the docker CLI does: `docker buildx imagetools create` where buildx
        is installed, else `docker manifest create` and `push`, which take images only (an index source
        is given as its images, by digest)."""
        what = f"index {reference}"
        if self.index_tool() == IMAGETOOLS:
            docker_cli(["buildx", "imagetools", "create", "--tag", reference, *sources], what, PushFailed)
            return
        members: list[str] = []
        for source in sources:
            document = json.loads(self._raw_manifest(source, what, PushFailed))
            inner = document.get("manifests") if isinstance(document, dict) else None
            if inner is None:
                members.append(source)
            else:
                repository = refs.split(source)[0]
                members += [f"{repository}@{m['digest']}" for m in inner
                            if (m.get("platform") or {}).get("os", "unknown") != "unknown"]
        insecure = self._insecure(reference)
        docker_cli(["manifest", "create", "--amend", *insecure, reference, *members], what, PushFailed)
        docker_cli(["manifest", "push", "--purge", *insecure, reference], what, PushFailed)

    def repo_digest(self, reference: str) -> str | None:
        """'<repository>@sha256:...': the registry digest this engine recorded for its image `reference` in
        that repository (when it pulled or pushed it); None when it has none."""
        repository = refs.split(reference)[0]
        for digest in self._inspect(reference).get("RepoDigests") or ():
            if str(digest).split("@", 1)[0] == repository:
                return str(digest)
        return None

    def image_size(self, reference: str) -> int:
        return int(self.client.api.inspect_image(reference)["Size"])

    def _inspect(self, reference: str) -> dict[str, Any]:
        try:
            return dict(self.client.api.inspect_image(reference))
        except docker.errors.ImageNotFound:
            raise PytorchCudaError(f"image {reference} is not here: build it (build.py) or pull it first") from None

    def labels(self, reference: str) -> dict[str, str]:
        return dict(self._inspect(reference)["Config"].get("Labels") or {})

    def architecture(self, reference: str) -> str:
        """The CPU architecture the image's config names ("amd64", "arm64")."""
        return str(self._inspect(reference).get("Architecture") or "")

    def exists(self, reference: str) -> bool:
        try:
            self.client.api.inspect_image(reference)
            return True
        except docker.errors.ImageNotFound:
            return False

    def pull(self, reference: str) -> str | None:
        """Pull `reference`; None on success, else the registry's reason in one line (Docker refuses with an
        HTTP error, Podman in the progress stream, after an HTTP 200)."""
        repository, tag = refs.split(reference)
        try:
            said = stream_error(self.client.api.pull(repository, tag=tag, stream=True, decode=True))
        except (docker.errors.APIError, requests.exceptions.RequestException) as err:
            return _one_line(str(err))[:200]
        return said[:200] if said else None

    def import_rootfs(self, tarball: str, reference: str) -> None:
        """Import a root filesystem tarball as `reference`. Imported unnamed, then tagged: Podman's
        Docker-compatible API ignores the tag asked for and names the import `<repository>:latest`."""
        repository, tag = refs.split(reference)
        # From the file: docker-py's import_image_from_stream sends a malformed chunked body.
        try:
            answer = self.client.api.import_image_from_file(tarball, changes=['CMD ["bash"]'])
            image_id = imported_id(answer)
            if image_id is None:
                raise BaseImageError(f"docker import of {reference} failed: {_one_line(str(answer))[:200]}")
            self.client.api.tag(image_id, repository, tag, force=True)
        except (docker.errors.APIError, requests.exceptions.RequestException) as err:
            raise BaseImageError(f"docker import of {reference} failed: {_one_line(str(err))[:200]}") from None

    def load_archive(self, archive: str) -> None:
        """`docker load` an image archive (it names its own tags). Docker tells a bad archive in the
        stream, Podman with an HTTP error: either is a BaseImageError."""
        try:
            with open(archive, "rb") as data:
                said = stream_error(self.client.api.load_image(data))
        except (docker.errors.APIError, requests.exceptions.RequestException) as err:
            raise BaseImageError(f"docker load of {archive} failed: {_one_line(str(err))[:200]}") from None
        if said:
            raise BaseImageError(f"docker load of {archive} failed: {said[:200]}")

    def runtimes(self) -> tuple[str, ...]:
        return tuple(sorted(self.client.info().get("Runtimes", {})))

    def cdi_spec_dirs(self) -> tuple[str, ...]:
        """Where the engine reads CDI specs (Docker >= 25 says so in `docker info`); () when it does not say."""
        return tuple(self.client.info().get("CDISpecDirs") or ())

    def run_verify(self, reference: str, timeout: int = 600) -> tuple[int, str]:
        """Run `verify` in a fresh container of `reference`: (exit code, its output).

        With all GPUs when the engine has the nvidia runtime; otherwise on the CPU, where verify
        itself says which checks it had to skip.
        """
        gpus = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if "nvidia" in self.runtimes() else None
        box = self.client.containers.run(reference, ["--quiet"], entrypoint=["verify"], detach=True,
                                         device_requests=gpus, shm_size=f"{VERIFY_SHM_GIB}g")
        try:
            try:
                code = box.wait(timeout=timeout)["StatusCode"]
            except requests.exceptions.RequestException:
                return 124, f"verify did not finish in {timeout} s"
            return code, box.logs().decode(errors="replace")
        finally:
            box.remove(force=True)

    def read_file(self, reference: str, path: str) -> bytes | None:
        """A file of an image, read from a created (never started) container; None when it has none."""
        box = self.client.containers.create(reference, ["true"], entrypoint="")
        try:
            stream, _ = box.get_archive(path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.next()
                handle = tar.extractfile(member) if member is not None else None
                return handle.read() if handle is not None else None
        except docker.errors.NotFound:
            return None
        finally:
            box.remove(force=True)

    def run_script(self, reference: str, script: str, timeout: int = 600) -> tuple[int, str]:
        """Run a shell script as root in a fresh container of `reference`: (exit code, stdout and stderr)."""
        box = self.client.containers.run(reference, ["sh", "-c", script], entrypoint="", user="0", detach=True)
        try:
            try:
                code = box.wait(timeout=timeout)["StatusCode"]
            except requests.exceptions.RequestException:
                return 124, f"did not finish in {timeout} s"
            return code, box.logs().decode(errors="replace")
        finally:
            box.remove(force=True)

    def relabel(self, image_id: str, labels: dict[str, str]) -> str:
        """The same image with more labels: a metadata-only build step (no layer), cached like any other."""
        return self.build(f"labels of {image_id[:19]}", dockerfile_context(f"FROM {image_id}\n"), "Dockerfile", {},
                          labels=labels)


def dockerfile_context(dockerfile: str) -> io.BytesIO:
    """A build context that holds only this Dockerfile (as `Dockerfile`), read from its start."""
    data = dockerfile.encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    return context


def connect(timeout: int = 600) -> DockerEngine:
    """An engine that has answered a ping, or DockerUnavailable saying what to do."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return DockerEngine(client)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as err:
        reason = str(err).split("(")[0].strip() or type(err).__name__
        raise DockerUnavailable(
            f"cannot reach the Docker daemon ({reason}): start it (e.g. `sudo systemctl start docker` or `dockerd &`) "
            f"or set DOCKER_HOST; --dry-run and --list work without it"
        ) from None
