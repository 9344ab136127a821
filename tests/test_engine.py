"""The engine's pure parts against what Docker 20.10 and Podman 4.3's Docker-compatible API really say.

Each input below was captured from the real engine (a failing step, a pull from an unreachable registry,
an import, `info`); tests/test_podman.py builds and runs through both engines for real.
"""
from __future__ import annotations

import pytest

from pytorch_cuda.engine import failure_message, imported_id, loopback_reachable, parse_step, stream_error


@pytest.mark.parametrize(("line", "step"), [
    ("Step 3/8 : RUN pip install -r /tmp/r.lock", (3, 8, "RUN pip install -r /tmp/r.lock")),  # Docker
    ("STEP 3/8: RUN pip install -r /tmp/r.lock", (3, 8, "RUN pip install -r /tmp/r.lock")),  # Podman (Buildah)
    ("Step 12/20 : LABEL a=b", (12, 20, "LABEL a=b")),
    ('STEP 5/5: LABEL "io.pytorch-cuda.sbom-digest"="sha256:00"', (5, 5, 'LABEL "io.pytorch-cuda.sbom-digest"="sha256:00"')),
])
def test_both_engines_step_lines_are_read(line, step):
    assert parse_step(line) == step


@pytest.mark.parametrize("line", [
    " ---> Running in 0123456789ab", "--> ba103612aed", "COMMIT", "Successfully built efca57f16ccd",
    "echo Step 1/2 : not at the start", "step 1/2: lower case is a RUN's own output",
])
def test_other_lines_are_not_steps(line):
    assert parse_step(line) is None


# The same failing step as each engine reports it: its STEP line in the log, then the error.
_DOCKER_TAIL = ['Step 2/2 : RUN set -e;     echo "a: b";     exit 7', " ---> Running in 1963ccf83fad", "a: b"]
_PODMAN_TAIL = ['STEP 2/2: RUN set -e;     echo "a: b";     exit 7', "a: b"]


@pytest.mark.parametrize(("message", "tail"), [
    ("The command '/bin/sh -c set -e;     echo \"a: b\";     exit 7' returned a non-zero code: 7", _DOCKER_TAIL),
    ('building at STEP "RUN set -e;     echo "a: b";     exit 7": while running runtime: exit status 7\n', _PODMAN_TAIL),
    # Without the log (a caller that kept none) the exit status is still found.
    ('building at STEP "RUN set -e;     echo "a: b";     exit 7": while running runtime: exit status 7\n', []),
])
def test_a_failed_run_is_its_exit_code_on_both_engines(message, tail):
    assert failure_message(message, tail) == "its command exited with code 7"


def test_our_own_words_come_first_on_podman_too():
    tail = ['STEP 3/4: RUN echo "pytorch-cuda: error: no wheels here" >&2; exit 3', "pytorch-cuda: error: no wheels here"]
    message = 'building at STEP "RUN echo "pytorch-cuda: error: no wheels here" >&2; exit 3": while running runtime: exit status 3\n'
    assert failure_message(message, tail) == "no wheels here"


def test_podmans_quote_of_the_step_is_left_out_of_other_failures():
    """The step is already named by the report (`failed at step 2/2 (COPY missing /x)`)."""
    tail = ["STEP 1/2: FROM docker.io/library/debian:bookworm-slim", "STEP 2/2: COPY missing /x"]
    message = ('building at STEP "COPY missing /x": checking on sources under "/var/tmp/libpod_builder2276700405/build": '
               'copier: stat: "/missing": no such file or directory\n')
    assert failure_message(message, tail) == ('checking on sources under "/var/tmp/libpod_builder2276700405/build": '
                                              'copier: stat: "/missing": no such file or directory')
    # A quote that is not the last step's is kept whole rather than cut at a guess.
    assert failure_message(message, tail[:1]) == message.strip()


def test_a_failure_before_any_step_is_kept_in_one_line():
    message = ("creating build container: initializing source docker://localhost/nonexistent:nope: pinging container "
               'registry localhost: Get "https://localhost/v2/": dial tcp 127.0.0.1:443: connect: connection refused\n')
    assert failure_message(message, ["STEP 1/1: FROM localhost/nonexistent:nope"]) == message.strip()


def test_a_streamed_error_is_found_on_both_engines():
    podman_pull = [{"progressDetail": {}, "errorDetail": {"message": 'initializing source docker://localhost:9/none:x: '
                    'pinging container registry localhost:9: Get "https://localhost:9/v2/": dial tcp 127.0.0.1:9: '
                    "connect: connection refused"}, "error": "initializing source docker://localhost:9/none:x: ..."}]
    docker_load = [{"errorDetail": {"message": "Error processing tar file(exit status 1): unexpected EOF"},
                    "error": "Error processing tar file(exit status 1): unexpected EOF"}]
    assert stream_error(podman_pull).startswith("initializing source docker://localhost:9/none:x: pinging")
    assert stream_error(docker_load) == "Error processing tar file(exit status 1): unexpected EOF"
    assert stream_error([{"status": "Pulling from library/debian"}, {"status": "Digest: sha256:00"}]) is None
    assert stream_error([{"stream": "Loaded image: localhost/pcprobe:arm"}]) is None
    assert stream_error([{"error": "line one\nline two"}]) == "line one line two"


@pytest.mark.parametrize("answer", [
    '{"status":"sha256:70b82160b5cbb3c095080497f677f0a2480be5ad8dc054b110ae39178b46a95c"}\r\n',  # Docker
    '{"status":"sha256:70b82160b5cbb3c095080497f677f0a2480be5ad8dc054b110ae39178b46a95c","progress":"",'
    '"progressDetail":{},"id":"sha256:70b82160b5cbb3c095080497f677f0a2480be5ad8dc054b110ae39178b46a95c"}\n',  # Podman
])
def test_the_imported_image_is_found_in_either_answer(answer):
    assert imported_id(answer) == "sha256:70b82160b5cbb3c095080497f677f0a2480be5ad8dc054b110ae39178b46a95c"
    assert imported_id(answer.encode()) == imported_id(answer)


def test_an_import_answer_without_an_image_is_none():
    assert imported_id("") is None and imported_id('{"status":"Importing"}\n') is None and imported_id("<html>") is None


_DOCKER_INFO = {"OSType": "linux", "OperatingSystem": "Debian GNU/Linux 12 (bookworm)",
                "SecurityOptions": ["name=seccomp,profile=default"]}
_PODMAN_INFO = {"OSType": "linux", "OperatingSystem": "debian", "SecurityOptions": ["name=seccomp,profile=default"]}


@pytest.mark.parametrize(("docker_host", "info", "platform", "reached"), [
    ("", _DOCKER_INFO, "linux", True),
    ("unix:///var/run/docker.sock", _DOCKER_INFO, "linux", True),
    ("unix:///run/podman/podman.sock", _PODMAN_INFO, "linux", True),  # rootful Podman: builds in the host's network
    ("tcp://build-host:2376", _DOCKER_INFO, "linux", False),
    ("ssh://me@build-host", _PODMAN_INFO, "linux", False),
    ("", {**_DOCKER_INFO, "SecurityOptions": ["name=seccomp,profile=default", "name=rootless"]}, "linux", False),
    ("unix:///run/user/1000/podman/podman.sock", {**_PODMAN_INFO, "SecurityOptions": ["name=rootless"]}, "linux", False),
    ("", {**_DOCKER_INFO, "OperatingSystem": "Docker Desktop"}, "linux", False),
    # Podman machine, Colima, Docker Desktop on a Mac: a Unix socket, a Linux engine, but in a VM.
    ("unix:///Users/me/.local/share/containers/podman/machine/podman.sock", _PODMAN_INFO, "darwin", False),
    ("", {**_DOCKER_INFO, "OSType": "windows"}, "linux", False),
])
def test_which_engines_builds_reach_this_hosts_loopback(docker_host, info, platform, reached):
    assert loopback_reachable(docker_host, info, platform) is reached


class _Box:
    def wait(self, timeout):
        return {"StatusCode": 0}

    def logs(self):
        return b"all passed\n"

    def remove(self, force):
        self.removed = force


class _Client:
    """The Docker SDK's surface run_verify uses: `info` and `containers.run`, recorded."""

    def __init__(self):
        self.runs = []
        self.containers = self

    def info(self):
        return {"Runtimes": {"nvidia": {}, "runc": {}}}

    def run(self, image, command, **kwargs):
        self.runs.append((image, command, kwargs))
        return _Box()


def test_verify_runs_with_the_one_shm_size_everywhere():
    """build.py --verify, the workflow's runs (--ci-matrix) and Kubernetes give verify the /dev/shm its shm
    check asks for (its message: `--shm-size=8g`)."""
    from pathlib import Path

    from pytorch_cuda import k8s, plan
    from pytorch_cuda.engine import DockerEngine

    from .dockerutil import VERIFY_SHM

    client = _Client()
    assert DockerEngine(client).run_verify("pytorch-cuda:x") == (0, "all passed\n")  # type: ignore[arg-type]
    ((_, _, kwargs),) = client.runs
    assert kwargs["shm_size"] == f"{plan.VERIFY_SHM_GIB}g" == VERIFY_SHM and kwargs["entrypoint"] == ["verify"]
    assert k8s.VerifyJob("pytorch-cuda:x", nodes=2).shm_size == f"{plan.VERIFY_SHM_GIB}Gi"
    shm_check = (Path(__file__).resolve().parent.parent / "verify" / "checks" / "shm.py").read_text()
    assert f"--shm-size={plan.VERIFY_SHM_GIB}g" in shm_check  # read, not imported: the check needs torch
