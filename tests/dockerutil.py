"""Real containers for tests: always force-removed, commands time-limited, logs shown on failure."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # the SDK is imported where a container is made: a GPU host may lack it
    import docker

REPO = Path(__file__).resolve().parent.parent
# --shm-size of a test's container that runs verify: the builder's one size (pytorch_cuda.plan.VERIFY_SHM_GIB).
VERIFY_SHM = "8g"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def build_py(*args: str, timeout: int = 3600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI as a user would."""
    return subprocess.run(
        [sys.executable, str(REPO / "build.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def build_failure(result: subprocess.CompletedProcess) -> str:
    """What a failed build.py run said about its failure: the failed step's log lines and the error lines,
    which the summary table printed after them would push out of a plain tail of stdout."""
    said = [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith(("    | ", "error:"))]
    return "\n".join(said[-40:]) + "\n" + result.stdout[-1500:] + result.stderr[-2000:]


@contextlib.contextmanager
def container(client: docker.DockerClient, image: str, command=None, **kwargs) -> Iterator:
    """Start a detached container; force-remove it whatever happens, printing its log on failure.

    For a server held by a module-scoped fixture; a test's own containers come from the `containers` fixture.
    """
    import docker.errors

    kwargs.setdefault("name", unique("pytorch-cuda-test"))
    started = client.containers.run(image, command, detach=True, **kwargs)
    try:
        yield started
    except BaseException:
        with contextlib.suppress(docker.errors.APIError):
            print(f"--- log of {started.name} ---\n" + started.logs(tail=80).decode(errors="replace"), file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(docker.errors.APIError):
            started.remove(force=True, v=True)


def verify_report(containers: TrackedContainers, tag: str, *args: str, **run_kwargs) -> tuple[int, dict, str]:
    """Run `verify --json` in a container of `tag` (docker run options in run_kwargs); (exit code, report, table)."""
    import json

    script = f"verify --json /tmp/report.json {' '.join(args)}; code=$?; echo '@@REPORT@@'; cat /tmp/report.json; exit $code"
    code, output = containers.run(tag, ["sh", "-c", script], timeout=300, entrypoint="", **run_kwargs)
    table, _, report = output.partition("@@REPORT@@")
    try:
        # The report is the JSON document after the marker; a line verify wrote to stderr may come first.
        return code, json.JSONDecoder().raw_decode(report[report.index("{"):])[0], table
    except ValueError as err:
        raise AssertionError(f"verify wrote no report (exit {code}):\n{output[-3000:]}") from err


class TrackedContainers:
    """The containers one test starts, after docker-stacks' TrackedContainer: each is recorded when made,
    so `close` removes it with its volumes however the test ended, and shows its log if the test failed.

    Made per test by the `containers` fixture (conftest.py); module-scoped servers use `container()`.
    """

    def __init__(self, client: docker.DockerClient, prefix: str = "pytorch-cuda-test") -> None:
        self.client = client
        self.prefix = prefix
        self.started: list = []
        self.networks: list = []

    def start(self, image: str, command=None, **kwargs):
        """Start a detached container with a unique name (unless given one) and return it.

        Created, recorded, then started: a container whose start fails (a port taken, no GPU runtime)
        is still removed.
        """
        kwargs.setdefault("name", unique(self.prefix))
        box = self.client.containers.create(image, command, detach=True, **kwargs)
        self.started.append(box)
        box.start()
        return box

    def run(self, image: str, command, timeout: int = 300, **kwargs) -> tuple[int, str]:
        """Run a command in a fresh container, wait at most `timeout` s, return (exit code, output)."""
        box = self.start(image, command, **kwargs)
        try:
            status = box.wait(timeout=timeout)
        except Exception as err:  # requests' ReadTimeout: a hang must fail the test, not stall CI
            raise AssertionError(f"{command!r} in {image} did not finish in {timeout} s") from err
        return status["StatusCode"], box.logs().decode(errors="replace")

    def network(self, prefix: str = "pytorch-cuda-test", **kwargs):
        """A network with a unique name, removed by `close` after the containers attached to it."""
        created = self.client.networks.create(unique(prefix), **kwargs)
        self.networks.append(created)
        return created

    def close(self, failed: bool) -> None:
        """Print each container's last 80 log lines to stderr if the test failed; remove them all, then the networks."""
        import docker.errors

        for box in self.started:
            if failed:
                with contextlib.suppress(docker.errors.APIError):
                    print(f"--- log of {box.name} ---\n" + box.logs(tail=80).decode(errors="replace"), file=sys.stderr)
            with contextlib.suppress(docker.errors.APIError):
                box.remove(force=True, v=True)
        for network in self.networks:
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
        self.started.clear()
        self.networks.clear()


def wait_healthy(box, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        box.reload()
        health = box.attrs["State"].get("Health", {}).get("Status")
        if health == "healthy":
            return
        if box.status == "exited":
            raise AssertionError(f"{box.name} exited: {box.logs(tail=40).decode(errors='replace')}")
        time.sleep(0.5)
    raise AssertionError(f"{box.name} not healthy after {timeout} s")


class BuildLeftovers:
    """The images a test's own builds made, named by the builder's ' ---> <id>' lines (build.py --verbose,
    or the build's stream): after the block, the untagged ones that were not there before are removed.

    Only those: other xdist workers build at the same time, and their half-made images are untagged too.
    A throwaway build (--no-cache, a failing step) leaves its builder stage behind, several GB.
    """

    _ID = re.compile(r"^\s*---> ([0-9a-f]{12})\s*$", re.M)

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        # One listing of IDs: images.list() inspects each image it lists, and fails on one another worker
        # removed in between (a warm run's failure, 2026-12-07).
        self.before = set(client.api.images(all=True, quiet=True))
        self.ids: list[str] = []

    def saw(self, text: str) -> None:
        """Note what a build said (its whole output, or one line of it)."""
        self.ids += self._ID.findall(text)

    def remove(self) -> None:
        import docker.errors

        for short in reversed(self.ids):  # the last step first: removing it takes its untagged parents along
            with contextlib.suppress(docker.errors.APIError):
                image = self.client.images.get(short)
                if image.id not in self.before and not image.tags:
                    self.client.images.remove(image.id)


@contextlib.contextmanager
def removing_leftovers_of_builds(client: docker.DockerClient) -> Iterator[BuildLeftovers]:
    leftovers = BuildLeftovers(client)
    try:
        yield leftovers
    finally:
        leftovers.remove()


def one_build_at_a_time(cuda: str) -> contextlib.AbstractContextManager[None]:
    """Builds of one CUDA line's Dockerfiles, one at a time across the xdist workers: the classic builder
    takes the newest image that matches a step as its cache, so a --no-cache build of the same Dockerfile
    running beside a cached one sends the cached one down the half-made chain (a step runs again)."""
    from pytorch_cuda import hostlock

    return hostlock.held(f"tests-build-cuda{cuda}")


REGISTRY_IMAGE = "pytorch-cuda-test/registry:debian"
REGISTRY_CONTEXT = Path(__file__).parent / "registry"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


KEPT_REGISTRY = "pytorch-cuda-test-registry"  # its container's name, and its storage volume's
# Fixed: Docker remembers which compressed blob of a layer a registry holds by the registry's address, so
# only a push to the same address as last run's finds the blobs there and compresses nothing again.
KEPT_REGISTRY_PORT = int(os.environ.get("PYTORCH_CUDA_TEST_REGISTRY_PORT", "38742"))
# Past this, the kept storage (every pushed version of the suite's images) is dropped and starts empty.
KEPT_REGISTRY_LIMIT = 24 * 10**9
RUN_LABEL = "io.pytorch-cuda.test-run"


def _registry_image(client: docker.DockerClient) -> None:
    """The registry's image, as every build gets its base: pulled, or made from Debian's packages on a machine
    that has built nothing yet (no registry reachable). Kept: the next run's build is all cache hits."""
    from pytorch_cuda import baseimage
    from pytorch_cuda.engine import DockerEngine

    base = re.search(r"^FROM (\S+)", (REGISTRY_CONTEXT / "Dockerfile").read_text(), re.M).group(1)
    baseimage.ensure_base_image(DockerEngine(client), base, say=lambda line: None)
    client.images.build(path=str(REGISTRY_CONTEXT), tag=REGISTRY_IMAGE, rm=True, forcerm=True, pull=False)


def _wait_for_registry(url: str, box) -> None:
    import requests

    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}/v2/", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, box.logs().decode()
        time.sleep(0.5)


@contextlib.contextmanager
def local_registry(client: docker.DockerClient) -> Iterator[tuple[str, str, object]]:
    """A fresh, empty Distribution registry on 127.0.0.1 (the engine trusts loopback registries over plain
    HTTP), for a measure of what pushes upload (benchmarks/layer_bench.py): yields (address, url, its
    container). Removed with its storage afterwards."""
    from pytorch_cuda import hostlock

    with hostlock.held("tests-registry-image"):
        _registry_image(client)
    port = free_port()
    with container(client, REGISTRY_IMAGE, ports={"5000/tcp": ("127.0.0.1", port)}) as box:
        url = f"http://127.0.0.1:{port}"
        _wait_for_registry(url, box)
        yield f"127.0.0.1:{port}", url, box


def registry_bytes(box) -> int:
    """Bytes of blob data a registry container stores: what pushes to it have uploaded."""
    blobs = "/var/lib/docker-registry/docker/registry/v2/blobs"
    code, out = box.exec_run(["sh", "-c", f"if [ -d {blobs} ]; then du -sb {blobs} | cut -f1; else echo 0; fi"])
    assert code == 0, out
    return int(out.decode().strip())


def kept_registry(client: docker.DockerClient, run: str) -> tuple[str, str, object]:
    """The registry the suite's pushes share, on 127.0.0.1:KEPT_REGISTRY_PORT, its storage in a volume kept
    between runs: (address, url, container). A run pushes what an earlier run pushed as cache hits (the
    registry has the blobs: nothing compressed or uploaded again), and changed layers in full. Started by
    the first worker that needs it, labelled with the run (`run`: conftest.RUN_ID's value) so that the
    run's end removes the container (remove_kept_registry); the volume stays. Where the port is taken, a fresh
    registry on a free port, removed with the run, stands in.
    """
    import docker.errors

    from pytorch_cuda import hostlock

    def start(port: int, **options) -> Any:
        return client.containers.run(REGISTRY_IMAGE, name=KEPT_REGISTRY, detach=True, labels={RUN_LABEL: run},
                                     ports={"5000/tcp": ("127.0.0.1", port)}, **options)

    with hostlock.held("tests-registry-image"):
        _registry_image(client)
        try:
            box = client.containers.get(KEPT_REGISTRY)
            if box.status != "running":
                box.remove(force=True)
                raise docker.errors.NotFound("not running")
        except docker.errors.NotFound:
            _drop_kept_storage_past_its_limit(client)
            try:
                box = start(KEPT_REGISTRY_PORT, volumes={KEPT_REGISTRY: {"bind": "/var/lib/docker-registry", "mode": "rw"}})
            except docker.errors.APIError as err:  # the port is taken: a registry of this run alone
                print(f"kept registry: 127.0.0.1:{KEPT_REGISTRY_PORT} unusable ({err.explanation}); a fresh one stands in")
                with contextlib.suppress(docker.errors.APIError):
                    client.containers.get(KEPT_REGISTRY).remove(force=True)
                box = start(free_port())
        box.reload()
        port = box.attrs["NetworkSettings"]["Ports"]["5000/tcp"][0]["HostPort"]
        url = f"http://127.0.0.1:{port}"
        _wait_for_registry(url, box)
    return f"127.0.0.1:{port}", url, box


def _drop_kept_storage_past_its_limit(client: docker.DockerClient) -> None:
    """Remove the kept storage volume when it has grown past KEPT_REGISTRY_LIMIT: the registry starts empty."""
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound):
        volume = client.volumes.get(KEPT_REGISTRY)
        size = client.containers.run(REGISTRY_IMAGE, ["du", "-sb", "/data"], remove=True,
                                     volumes={KEPT_REGISTRY: {"bind": "/data", "mode": "ro"}})
        if int(size.split()[0]) > KEPT_REGISTRY_LIMIT:
            volume.remove(force=True)


def remove_kept_registry(client: docker.DockerClient, run: str) -> None:
    """At a run's end: remove the kept registry's container if that run started it (its volume stays)."""
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound):
        box = client.containers.get(KEPT_REGISTRY)
        if box.labels.get(RUN_LABEL) == run:
            box.remove(force=True)


# Names the CUDA 13.0 images get for their push (tests/cuda13/conftest.py), used by two workers at once: removed
# when the run ends, not when one of them does. The images stay, by their plain tags.
PUSHED_NAME = re.compile(r"^127\.0\.0\.1:\d+/cuda13/pytorch-cuda:")


def remove_pushed_names(client: docker.DockerClient) -> None:
    import docker.errors

    for name in image_names(client):
        if PUSHED_NAME.match(name):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(name)


def image_names(client: docker.DockerClient) -> list[str]:
    """Every name an image of the engine has, from one listing: `images.list()` inspects each image it lists,
    and fails on one another worker removed in between."""
    return [name for image in client.api.images() for name in image.get("RepoTags") or () if name != "<none>:<none>"]


def manifest_blobs(url: str, repository: str, tag: str) -> dict[str, int]:
    """digest -> size of what a registry stores for one image (its config and layer blobs, compressed),
    read from the image's manifest."""
    import requests

    manifest = requests.get(f"{url}/v2/{repository}/manifests/{tag}", timeout=30,
                            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}).json()
    return {blob["digest"]: blob["size"] for blob in (manifest["config"], *manifest["layers"])}


@contextlib.contextmanager
def image_rootfs(client: docker.DockerClient, reference: str) -> Iterator[Path]:
    """The image's root filesystem as a directory (for ch-run and `podman run --rootfs`), read-only.

    On Docker's overlay2 store it is the image's own layers, mounted as a read-only overlay: nothing is
    copied (an export would write 6 GB, which a machine full of images may not have). Elsewhere (the
    containerd store, another driver) it is `docker export`ed into the directory. Gone afterwards.
    """
    import shutil
    import tempfile

    image = client.images.get(reference)
    driver = image.attrs.get("GraphDriver") or {}
    directory = Path(tempfile.mkdtemp(prefix="pytorch-cuda-rootfs-", dir="/var/tmp"))
    directory.chmod(0o755)
    mounted = False
    try:
        data = driver.get("Data") or {}
        layers = [data.get("UpperDir", ""), *filter(None, (data.get("LowerDir") or "").split(":"))]
        options = "ro,lowerdir=" + ":".join(layers)
        # No upper directory: overlayfs is read-only then, as an HPC runtime mounts an image. The options
        # must fit in a page.
        if driver.get("Name") == "overlay2" and os.geteuid() == 0 and all(layers) and len(options) < 4000:
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(directory)], check=True,
                           capture_output=True, timeout=60)
            mounted = True
        else:
            box = client.containers.create(reference)
            try:
                export = subprocess.Popen(["docker", "export", box.id], stdout=subprocess.PIPE)
                unpack = subprocess.run(["tar", "-x", "-C", str(directory), "--exclude=dev/*"], stdin=export.stdout,
                                        capture_output=True, timeout=900)
                export.wait(timeout=60)
                assert export.returncode == 0 and unpack.returncode == 0, unpack.stderr.decode()[-2000:]
            finally:
                box.remove(force=True)
        yield directory
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(directory)], check=False, capture_output=True, timeout=60)
            directory.rmdir()
        else:
            shutil.rmtree(directory, ignore_errors=True)
