"""Podman: build.py's engine against Podman's Docker-compatible API, and the images run by Podman.

Real engines only: rootful Podman (4.3, Debian's, set up by .ci/run) through a `podman system service` of
this session on a socket of its own, stopped at the end, and Docker beside it where a test shows both say
the same. Images reach Podman's storage from Docker's (`podman pull docker-daemon:`, no registry here),
keyed by image ID: a later run finds its copy and skips the copy. The runtime image: 5.8 GB kept in
/var/lib/containers, about 100 s to copy, 45 s for a relabelled one (its layers are stored already), and
as much again in /var/tmp while it copies (Podman stages Docker's export there).

What they found (Podman 4.3.1): the compatible `/build` always writes Docker-format images
(`pkg/api/handlers/compat/images_build.go`: `format := buildah.Dockerv2ImageManifest`; only the libpod
endpoint reads `outputformat`), so HEALTHCHECK stays, inherited ones too; it is the `podman build` CLI,
OCI by default, that drops it. Podman's compatible image inspect leaves `Config.Healthcheck` out (not
wired in that handler), so it is read here with `podman image inspect`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from pytorch_cuda import baseimage, hostlock
from pytorch_cuda.engine import BuildEvents, DockerEngine, dockerfile_context
from pytorch_cuda.errors import BaseImageError, BuildFailed

from .clients import wait_for_jupyter
from .dockerutil import VERIFY_SHM, BuildLeftovers, build_failure, build_py, image_rootfs, unique

pytestmark = pytest.mark.docker

BASE = "debian:bookworm-slim"  # the suite's base, made from Debian's packages where no registry answers
HEALTHCHECK = ["CMD-SHELL", "true"]
PODMAN_TMP = Path("/var/tmp")  # where rootful Podman keeps what it is sent (containers.conf image_copy_tmp_dir)


def podman(*args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)} (exit {done.returncode}):\n{done.stderr[-3000:]}"
    return done


def podman_healthcheck(reference: str) -> Any:
    """An image's healthcheck as Podman itself reports it: its compatible inspect omits it, and its own has
    it beside the (OCI-shaped) Config, which has no field for it."""
    return json.loads(podman("image", "inspect", reference).stdout)[0].get("Healthcheck")


class Leftovers(BuildLeftovers):
    """BuildLeftovers for either engine: Docker's builder says ' ---> <12 hex>', Podman's '--> <11 hex>'."""

    _ID = re.compile(r"^\s*-{2,3}> ([0-9a-f]{11,12})\s*$", re.M)


@contextlib.contextmanager
def leftovers_of_builds(client: Any) -> Iterator[Leftovers]:
    """The block's own builds' images, removed after it (only those: other workers build meanwhile)."""
    found = Leftovers(client)
    try:
        yield found
    finally:
        found.remove()


@pytest.fixture(scope="session")
def podman_here() -> None:
    """Rootful Podman, as .ci/run installs and configures it."""
    if shutil.which("podman") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Podman (.ci/run installs it)")
        pytest.skip("no podman here (.ci/run installs it)")
    if os.geteuid() != 0:
        pytest.skip("these tests run rootful Podman (.ci/run, as root, configures it)")


@pytest.fixture(scope="session")
def podman_url(podman_here, tmp_path_factory) -> Iterator[str]:
    """This session's own `podman system service` (DOCKER_HOST for it), stopped afterwards."""
    import docker
    import docker.errors

    directory = tmp_path_factory.mktemp("podman")
    socket = directory / "podman.sock"
    with open(directory / "service.log", "w") as log:
        service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket}"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:  # the client asks the API version as it is made: only once the socket answers
                client = docker.DockerClient(base_url=f"unix://{socket}", timeout=60)
                break
            except docker.errors.DockerException:
                if service.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"podman system service did not answer on {socket}:\n"
                                f"{(directory / 'service.log').read_text()[-2000:]}")
                time.sleep(0.2)
        components = [part["Name"] for part in client.version().get("Components", [])]
        client.close()
        assert "Podman Engine" in components, components
        yield f"unix://{socket}"
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


@pytest.fixture(scope="session")
def podman_client(podman_url) -> Iterator[Any]:
    """docker-py, as build.py makes it, talking to Podman."""
    import docker

    client = docker.DockerClient(base_url=podman_url, timeout=600)
    yield client
    client.close()


def copy_into_podman(docker_client, reference: str) -> None:
    """Docker's `reference` into Podman's storage, unless Podman holds that very image under the name (the
    copy keeps the config, so the ID). An older image of the name is removed after the copy, which found
    the layers the two share already stored (a new commit only relabels the image: its layers are the same)."""
    image_id = docker_client.images.get(reference).id
    with hostlock.held(f"tests-podman-copy-{reference}"):
        held = podman("image", "inspect", "--format", "{{.Id}}", reference, check=False)
        older = f"sha256:{held.stdout.strip()}" if held.returncode == 0 else None
        if older == image_id:
            return
        podman("pull", "--quiet", f"docker-daemon:{reference}", timeout=1800)
        if older is not None:
            podman("rmi", older, check=False)  # kept only if something else still names it


@pytest.fixture(scope="session")
def docker_base(docker_client) -> str:
    baseimage.ensure_base_image(DockerEngine(docker_client), BASE, say=lambda line: None)
    return BASE


@pytest.fixture(scope="session")
def podman_base(podman_here, docker_client, docker_base) -> str:
    copy_into_podman(docker_client, docker_base)
    return BASE


@dataclasses.dataclass
class UnderTest:
    """One real engine, as build.py's DockerEngine drives it."""

    name: str
    client: Any

    @property
    def engine(self) -> DockerEngine:
        return DockerEngine(self.client)

    def healthcheck(self, image_id: str) -> Any:
        if self.name == "podman":
            return podman_healthcheck(image_id)
        return self.client.api.inspect_image(image_id)["Config"].get("Healthcheck")


@pytest.fixture(params=["docker", "podman"])
def under_test(request, docker_client, docker_base) -> UnderTest:
    if request.param == "docker":
        return UnderTest("docker", docker_client)
    request.getfixturevalue("podman_base")
    return UnderTest("podman", request.getfixturevalue("podman_client"))


def test_a_build_keeps_its_healthcheck_and_so_does_one_built_on_it(under_test):
    """The jupyter and ssh images' healthchecks, through Podman's Docker-compatible API as through Docker:
    the image's own, and one inherited by a build FROM it (a variant on the runtime image)."""
    steps: list[tuple[int, int, str]] = []
    tag = f"pytorch-cuda-test/healthcheck:{unique('t')}"  # named, so that no `image prune` beside it takes them
    with leftovers_of_builds(under_test.client) as leftovers:
        try:
            events = BuildEvents(on_step=lambda n, total, text: steps.append((n, total, text)), on_line=leftovers.saw)
            parent = under_test.engine.build(
                tag, dockerfile_context(f"FROM {BASE}\nHEALTHCHECK --interval=30s CMD true\nRUN echo built > /built\n"),
                "Dockerfile", {}, labels={"io.pytorch-cuda.test": "healthcheck"}, events=events)
            under_test.engine.tag(parent, [f"{tag}-parent"])
            child = under_test.engine.build(tag, dockerfile_context(f"FROM {tag}-parent\nRUN true\n"), "Dockerfile", {},
                                            events=events)
            under_test.engine.tag(child, [tag])
            # Every step was seen by the progress display (Podman adds one for the API's labels).
            assert [(n, text) for n, _, text in steps[:3]] == [
                (1, f"FROM {BASE}"), (2, "HEALTHCHECK --interval=30s CMD true"), (3, "RUN echo built > /built")], steps
            assert [(n, text) for n, _, text in steps[-2:]] == [(1, f"FROM {tag}-parent"), (2, "RUN true")], steps
            for image in (parent, child):
                healthcheck = under_test.healthcheck(image)
                assert healthcheck and healthcheck["Test"] == HEALTHCHECK, (image, healthcheck)
            assert under_test.engine.labels(tag)["io.pytorch-cuda.test"] == "healthcheck"
            assert under_test.engine.read_file(tag, "/built") == b"built\n"
            leftovers.ids += [parent, child]
        finally:
            for name in (tag, f"{tag}-parent"):
                with contextlib.suppress(Exception):
                    under_test.client.images.remove(name)


@pytest.mark.parametrize(("script", "printed", "told"), [
    ("echo 'ERROR: No matching distribution found for torch==2.4.1' >&2; exit 7",
     "ERROR: No matching distribution found for torch==2.4.1", "its command exited with code 7"),
    ('echo "pytorch-cuda: error: no wheels for TARGETARCH=riscv64" >&2; exit 1',
     "pytorch-cuda: error: no wheels for TARGETARCH=riscv64", "no wheels for TARGETARCH=riscv64"),
])
def test_a_failed_step_is_named_by_number_and_instruction(under_test, script, printed, told):
    """The same one-line report from both engines: the step (Docker's `Step 3/4 :`, Podman's `STEP 3/4:`),
    then the exit code, or the template's own words, rather than the kilobytes of the command."""
    dockerfile = f"FROM {BASE}\nRUN echo first\nRUN set -e; \\\n    {script}\nRUN echo never\n"
    tag = f"pytorch-cuda-test/failing:{unique('t')}"
    with leftovers_of_builds(under_test.client) as leftovers, pytest.raises(BuildFailed) as failed:
        under_test.engine.build(tag, dockerfile_context(dockerfile), "Dockerfile", {}, events=BuildEvents(on_line=leftovers.saw))
    instruction = " ".join(f"RUN set -e; {script}".split())
    assert str(failed.value) == f"build of {tag} failed at step 3/4 ({instruction[:60]}): {told}"
    assert failed.value.step == f"step 3/4 ({instruction[:60]})"
    said = failed.value.log_tail
    assert printed in said, said  # what the step printed, which build.py shows above the error line
    assert not [line for line in said if re.match(r"(?i)step 4/4", line)], said  # nothing ran after it


class _Answers(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"served on the host's loopback\n")

    def log_message(self, *args: object) -> None:
        pass


def test_a_host_network_build_reaches_this_hosts_loopback(under_test):
    """The wheel cache serves on 127.0.0.1 and build.py's builds fetch from it with host networking; the engine
    says whether they can. Rootful Podman's compatible /build runs RUN steps in the host's network whether asked
    or not (`networkmode` is not a network there): both engines say yes, and a RUN step really is answered."""
    assert under_test.engine.reaches_host_loopback()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    dockerfile = (f"FROM {BASE}\nRUN bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port} "
                  f"&& printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3'\n")
    try:
        with leftovers_of_builds(under_test.client) as leftovers:
            lines: list[str] = []
            events = BuildEvents(on_line=lambda line: (lines.append(line), leftovers.saw(line)))
            under_test.engine.build(unique("pytorch-cuda-test/loopback"), dockerfile_context(dockerfile), "Dockerfile", {},
                                    nocache=True, host_network=True, events=events)
    finally:
        server.shutdown()
        server.server_close()
    assert "served on the host's loopback" in lines, lines


def test_what_a_registry_refuses_is_one_line(under_test):
    """Docker refuses a pull with an HTTP error, Podman in the stream after an HTTP 200: both are told."""
    said = under_test.engine.pull("127.0.0.1:9/pytorch-cuda-test/nothing:here")
    assert said is not None and "127.0.0.1:9" in said and "\n" not in said, said


def test_base_images_are_imported_and_loaded_under_the_names_asked_for(under_test, tmp_path):
    """The base image made from Debian's packages is imported (loaded, for arm64): Podman's compatible import
    ignores the tag (it names the import `<repository>:latest`); the engine names it itself, and no :latest
    appears. An archive that is no image is refused in one line by both."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "made-here").write_text("pytorch-cuda test\n")
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname=".")
    repository = f"pytorch-cuda-test/imported-{unique('r')}"
    # Podman 4.3's compatible import and load keep each upload in /var/tmp (api_load.tar*): removed here.
    uploads = set(PODMAN_TMP.glob("api_load.tar*"))
    try:
        under_test.engine.import_rootfs(str(tarball), f"{repository}:bookworm")
        assert under_test.engine.exists(f"{repository}:bookworm")
        assert not under_test.engine.exists(f"{repository}:latest")
        assert under_test.client.api.inspect_image(f"{repository}:bookworm")["Config"]["Cmd"] == ["bash"]
        # The arm64 base is loaded from an archive that names itself (Podman stores it as localhost/<name>).
        baseimage.write_image_archive(tarball, tmp_path / "image.tar", f"{repository}:arm64", "arm64")
        under_test.engine.load_archive(str(tmp_path / "image.tar"))
        assert under_test.engine.architecture(f"{repository}:arm64") == "arm64"
        (tmp_path / "bad.tar").write_text("not an image archive\n")
        with pytest.raises(BaseImageError) as refused:
            under_test.engine.load_archive(str(tmp_path / "bad.tar"))
        assert str(refused.value).startswith(f"docker load of {tmp_path / 'bad.tar'} failed: ")
        assert "\n" not in str(refused.value)
    finally:
        for name in (f"{repository}:bookworm", f"{repository}:latest", f"{repository}:arm64"):
            with contextlib.suppress(Exception):
                under_test.client.images.remove(name)
        if under_test.name == "podman":
            for upload in set(PODMAN_TMP.glob("api_load.tar*")) - uploads:
                upload.unlink(missing_ok=True)


def test_an_image_docker_built_keeps_its_healthcheck_in_podman(docker_client, podman_base):
    """What build.py builds with Docker and Podman users then pull (here copied from Docker's storage):
    a Docker-format image, its HEALTHCHECK kept."""
    tag = f"pytorch-cuda-test/docker-built:{unique('t')}"
    with leftovers_of_builds(docker_client) as leftovers:
        image = DockerEngine(docker_client).build(tag, dockerfile_context(f"FROM {BASE}\nHEALTHCHECK CMD true\n"), "Dockerfile", {},
                                                  events=BuildEvents(on_line=leftovers.saw))
        docker_client.api.tag(image, *tag.split(":"))
        try:
            podman("pull", "--quiet", f"docker-daemon:{tag}")
            try:
                assert (podman_healthcheck(tag) or {}).get("Test") == HEALTHCHECK
            finally:
                podman("rmi", tag)
        finally:
            docker_client.images.remove(tag)


def test_the_podman_cli_keeps_a_healthcheck_only_in_docker_format(podman_base, tmp_path):
    """`podman build` writes OCI images by default, which have no HEALTHCHECK: an image built FROM ours loses the
    inherited one, with a warning; `--format docker` keeps it (what the README tells Podman users)."""
    made: list[str] = []

    def build(dockerfile: str, *options: str) -> tuple[str, str]:
        directory = tmp_path / f"context{len(made)}"
        directory.mkdir()
        (directory / "Containerfile").write_text(dockerfile)
        iidfile = directory / "iid"
        done = podman("build", "--layers=false", "--iidfile", str(iidfile), *options, str(directory))
        made.append(iidfile.read_text().strip())
        return made[-1], done.stdout + done.stderr

    try:
        parent, _ = build(f"FROM {BASE}\nHEALTHCHECK CMD true\n", "--format", "docker")
        oci, said = build(f"FROM {parent}\nRUN true\n")
        docker_format, _ = build(f"FROM {parent}\nRUN true\n", "--format", "docker")
        assert (podman_healthcheck(parent) or {}).get("Test") == HEALTHCHECK
        assert podman_healthcheck(oci) is None
        assert "HEALTHCHECK is not supported for OCI image format" in said, said
        assert (podman_healthcheck(docker_format) or {}).get("Test") == HEALTHCHECK
    finally:
        for image in reversed(made):
            podman("rmi", image, check=False)


@pytest.fixture(scope="session")
def podman_runtime(podman_here, built, docker_client) -> Iterator[list[str]]:
    """`podman run` options that run the runtime image under test (the suite's build, or --image) as Podman
    runs an image: its root filesystem (its own layers, mounted read-only, with Podman's overlay on top)
    and its config (Env, User, WorkingDir). Copying the image into Podman's storage instead
    (`podman pull docker-daemon:`) writes 5.8 GB to keep and 5.8 GB more while it runs, which a machine
    holding the suite's images may not have; done by hand, it passes the same tests."""
    config = docker_client.images.get(built["runtime"].tag).attrs["Config"]
    with image_rootfs(docker_client, built["runtime"].tag) as rootfs:
        options = ["--user", config["User"], "--workdir", config["WorkingDir"]]
        for variable in config.get("Env") or ():
            options += ["--env", variable]
        yield [*options, "--rootfs", f"{rootfs}:O"]


def test_verify_passes_under_podman(podman_runtime):
    """`podman run --rm IMAGE verify`, as a Podman user types it, on this GPU-less machine."""
    done = podman("run", "--rm", f"--shm-size={VERIFY_SHM}", *podman_runtime, "verify", timeout=600, check=False)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-4000:]
    rows = dict(re.findall(r"^(\w+)\s+(PASS|WARN|SKIP|FAIL)\s", said, re.M))
    for check in ("environment", "autograd", "compile", "train", "shm"):
        assert rows.get(check) == "PASS", (check, said[-4000:])
    assert "FAIL" not in rows.values() and re.search(r"verify: \d+ passed, \d+ warned, 0 failed", said), said[-4000:]


def test_an_arbitrary_uid_in_group_0_imports_torch_under_podman(podman_runtime, built):
    """OpenShift's way (a random uid, group 0), under Podman (a later --user wins over the image's)."""
    user = podman_runtime.index("--user")
    options = podman_runtime[:user] + podman_runtime[user + 2:]
    done = podman("run", "--rm", "-u", "12345:0", *options,
                  "python", "-c", "import os, torch; print(os.getuid(), os.getgid(), torch.__version__)")
    uid, gid, version = done.stdout.split()
    assert (uid, gid) == ("12345", "0") and version.startswith(built["runtime"].build.torch + "+"), done.stdout


# Copying the 12.1 runtime into Podman's storage keeps 5.8 GB there and stages as much again in /var/tmp while it
# copies: more than a machine holding the suite's images and its --no-cache rebuild can spare at once, so the
# suite runs this only when asked (alone, after the suite: README, Platforms).
FULL_JUPYTER = "PYTORCH_CUDA_TEST_PODMAN_JUPYTER"


def test_build_py_builds_the_jupyter_image_through_podman_and_it_keeps_its_healthcheck(podman_url, built, docker_client):
    """The real jupyter variant, built by build.py against Podman's Docker-compatible API on the suite's runtime
    (copied into Podman's storage): the image keeps its HEALTHCHECK, the one Docker's build of it has, and
    under `podman run` JupyterLab answers with its token and Podman's own health check passes."""
    if os.environ.get(FULL_JUPYTER) != "1":
        pytest.skip(f"{FULL_JUPYTER}=1 runs it: it copies the 5.8 GB runtime into Podman's storage (about 17 GB "
                    "at its peak), more disk than the suite's images leave")
    runtime, jupyter = built["runtime"].tag, built["jupyter"].tag
    need = 3 * docker_client.images.get(runtime).attrs["Size"]  # 15 GB free ran out here (2026-12-06)
    free = min(shutil.disk_usage(path).free for path in ("/var/lib/containers", PODMAN_TMP))
    assert free > need, f"copying {runtime} into Podman needs {need / 1e9:.1f} GB free, {free / 1e9:.1f} GB is"
    token = "podman-" + unique("token")
    box = ""
    copy_into_podman(docker_client, runtime)
    try:
        started = time.monotonic()
        result = build_py("--cuda", built["runtime"].build.cuda, "--variant", "jupyter", "--no-alias", timeout=2400,
                          env={"DOCKER_HOST": podman_url})
        print(f"\nbuild.py --variant jupyter against Podman: {time.monotonic() - started:.0f} s\n{result.stdout[-1500:]}")
        assert result.returncode == 0, build_failure(result)
        health = podman_healthcheck(jupyter)
        assert health and health.get("Test") == docker_client.images.get(jupyter).attrs["Config"]["Healthcheck"]["Test"], health
        box = podman("run", "-d", "-p", "127.0.0.1::8888", "-e", f"JUPYTER_TOKEN={token}", jupyter).stdout.strip()
        port = int(podman("port", box, "8888/tcp").stdout.strip().rsplit(":", 1)[1])
        wait_for_jupyter(f"http://127.0.0.1:{port}", token, timeout=180)
        assert podman("healthcheck", "run", box, check=False).returncode == 0, podman("logs", box).stdout[-2000:]
    finally:
        if box:
            podman("rm", "-f", box, check=False)
        podman("rmi", jupyter, check=False)
        podman("rmi", runtime, check=False)
        podman("image", "prune", "-f", check=False)  # the build's stages: Podman's storage holds nothing else unnamed
