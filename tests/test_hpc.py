"""The jupyter image (the runtime plus JupyterLab) under an HPC runtime: Charliecloud's ch-run, run as an
unprivileged user, the stand-in here for Apptainer/Singularity and enroot/Pyxis, with the same traits
(README, "HPC: Apptainer, enroot, Charliecloud"): the image read-only, the host user's uid outside the
image's group, a HOME the image does not have, the image's ENV, USER, WORKDIR and ENTRYPOINT ignored, the
host's network. ch-run gets the image's own layers, mounted read-only (ch-convert takes minutes: it gzips).
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from .clients import jupyter_get, wait_for_jupyter
from .dockerutil import free_port, image_rootfs
from .wheels import make_wheel

pytestmark = pytest.mark.docker

HOST_UID = 54321  # a host user: no entry in the image, not in its group 0
# What a login shell on a cluster node hands the runtime; ch-run passes it on (no --set-env, so the image's
# ENV is not applied: no PATH with the venv, no VIRTUAL_ENV, no PIP_CONSTRAINT, no HOME of the image's).
HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/home/alice",
            "USER": "alice", "LANG": "C.UTF-8"}
PRIVATE_HOME = f"/tmp/pytorch-cuda-home-{HOST_UID}"  # the host's /tmp: ch-run binds it


def ch_run(tree: Path, command: list[str], binds: tuple[str, ...] = (), env: dict | None = None,
           timeout: float = 300, background: bool = False, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    """ch-run as the unprivileged host user (setpriv: no root, no groups); started in the background (Popen
    with `popen`'s arguments) when asked."""
    argv = ["setpriv", f"--reuid={HOST_UID}", f"--regid={HOST_UID}", "--clear-groups",
            "ch-run", *(f"--bind={bind}" for bind in binds), str(tree), "--", *command]
    environment = dict(HOST_ENV, **(env or {}))
    if background:
        return subprocess.Popen(argv, env=environment, cwd="/", **popen)
    return subprocess.run(argv, env=environment, cwd="/", capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tree(built, docker_client) -> Iterator[Path]:
    """The jupyter image's root filesystem as a directory ch-run can use (its own layers, mounted read-only)."""
    if shutil.which("ch-run") is None:
        pytest.skip("ch-run is not installed (Debian: charliecloud-runtime; .ci/run installs it)")
    with image_rootfs(docker_client, built["jupyter"].tag) as directory:
        probe = ch_run(directory, ["true"])
        if probe.returncode != 0 and "namespace" in probe.stderr:
            pytest.skip(f"this kernel refuses unprivileged user namespaces, which ch-run needs: {probe.stderr.strip()}")
        shutil.rmtree(PRIVATE_HOME, ignore_errors=True)  # each run starts as a new host user would
        try:
            yield directory
        finally:
            shutil.rmtree(PRIVATE_HOME, ignore_errors=True)


def test_the_image_is_read_only_and_the_user_is_the_hosts(tree):
    result = ch_run(tree, ["sh", "-c", "id -u; id -G; pwd; touch /opt/venv/x 2>&1 || true"])
    uid, groups, cwd, touched = result.stdout.splitlines()[:4]
    assert result.returncode == 0 and uid == str(HOST_UID) and "0" not in groups.split(), result
    assert cwd == "/" and "Read-only file system" in touched, result.stdout


def test_torch_and_verify_work_without_the_images_environment(tree):
    result = ch_run(tree, ["python", "-c", "import os, sys, torch; print(sys.prefix, os.environ['HOME'], "
                                           "os.environ['PIP_CONSTRAINT'], torch.__version__)"])
    assert result.returncode == 0, result.stderr
    prefix, home, constraint, version = result.stdout.split()
    assert prefix == "/opt/venv" and home == PRIVATE_HOME and constraint == "/etc/pytorch-cuda/constraints.txt"
    assert version.startswith("2.4.1"), version
    result = ch_run(tree, ["verify", "--only", "environment,cuda,autograd,compile,train"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compile      PASS" in result.stdout, result.stdout


@pytest.fixture
def wheels() -> Iterator[Path]:
    """A local wheel in a directory the host user can read (pytest's own temp directory is root's only)."""
    directory = Path(tempfile.mkdtemp(prefix="pytorch-cuda-wheels-", dir="/var/tmp"))
    try:
        directory.chmod(0o755)
        make_wheel(directory, "pcuda-demo", "1.0")
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_pip_install_goes_to_home_and_python_finds_it(tree, wheels):
    installed = ch_run(tree, ["pip", "install", "--no-index", "--disable-pip-version-check", "--quiet",
                              "/mnt/pcuda_demo-1.0-py3-none-any.whl"], binds=(f"{wheels}:/mnt",))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    found = ch_run(tree, ["python", "-c", "import pcuda_demo; print(pcuda_demo.__file__)"])
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip().startswith(f"{PRIVATE_HOME}/.local/share/pytorch-cuda/2.4.1-cuda12.1/lib/"), found.stdout
    # torch, pinned by the image, cannot be replaced from there either
    refused = ch_run(tree, ["pip", "install", "--no-index", "--disable-pip-version-check", "torch==2.3.0"])
    assert refused.returncode != 0


def test_jupyterlab_starts_and_answers_with_its_token(tree):
    port, token = free_port(), secrets.token_urlsafe(24)
    with tempfile.TemporaryFile() as log:
        where = {"JUPYTER_TOKEN": token, "JUPYTER_SERVER_PORT": str(port), "JUPYTER_SERVER_IP": "127.0.0.1"}
        server = ch_run(tree, ["start-jupyter"], env=where, background=True, stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                wait_for_jupyter(f"http://127.0.0.1:{port}", token, timeout=120)
            except AssertionError:
                log.seek(0)
                raise AssertionError(log.read().decode(errors="replace")[-3000:]) from None
            assert jupyter_get(f"http://127.0.0.1:{port}", "/api/status").status_code == 403
            status = jupyter_get(f"http://127.0.0.1:{port}", "/api/status", token)
            assert status.status_code == 200 and status.json()["kernels"] == 0
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    assert os.path.isdir(f"{PRIVATE_HOME}/.local/share/jupyter"), "JupyterLab's data went somewhere else"
