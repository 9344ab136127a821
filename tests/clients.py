"""Real clients for the jupyter and ssh images and for compose.yaml: the OpenSSH client, paramiko,
Jupyter's REST and websocket API, the `docker compose` CLI. Every one has a timeout."""
from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import paramiko
import pytest
import requests
import websocket

from .dockerutil import REPO, unique

T = TypeVar("T")

COMPOSE_FILES = (REPO / "compose.yaml", REPO / "compose.cpu.yaml")


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call `probe` until it returns something other than None (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = probe()
            if result is not None:
                return result
        except Exception as err:  # not up yet: refused, reset, 403 while starting
            last = err
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not ready after {timeout} s (last error: {last!r})")
        time.sleep(interval)


def published_port(box, container_port: str) -> int:
    """The host port Docker chose for `container_port` ('8888/tcp') of a container started with None."""
    box.reload()
    return int(box.attrs["NetworkSettings"]["Ports"][container_port][0]["HostPort"])


# --- Jupyter -------------------------------------------------------------------------------------

def jupyter_get(base_url: str, path: str, token: str | None = None, timeout: float = 10) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.get(f"{base_url}{path}", headers=headers, timeout=timeout, allow_redirects=False)


def wait_for_jupyter(base_url: str, token: str, timeout: float = 90) -> None:
    """Until an authenticated API call answers 200."""
    wait_for(lambda: True if jupyter_get(base_url, "/api/status", token, timeout=2).status_code == 200 else None,
             timeout, f"Jupyter at {base_url}", interval=0.1)


def run_in_kernel(base_url: str, token: str, code: str, timeout: float = 120) -> str:
    """Start a kernel through the REST API, run `code` over the websocket channels, return its stdout.

    The kernel is deleted afterwards. A Python error in `code` raises AssertionError with the traceback.
    """
    headers = {"Authorization": f"token {token}"}
    reply = requests.post(f"{base_url}/api/kernels", headers=headers, json={"name": "python3"}, timeout=30)
    assert reply.status_code == 201, (reply.status_code, reply.text[:500])
    kernel_id = reply.json()["id"]
    session = uuid.uuid4().hex
    ws_url = base_url.replace("http://", "ws://", 1) + f"/api/kernels/{kernel_id}/channels?session_id={session}"
    try:
        ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=timeout)
        try:
            return _execute(ws, session, code, timeout)
        finally:
            ws.close()
    finally:
        requests.delete(f"{base_url}/api/kernels/{kernel_id}", headers=headers, timeout=30)


def _execute(ws: websocket.WebSocket, session: str, code: str, timeout: float) -> str:
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "tests", "session": session,
                   "version": "5.3", "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    stdout: list[str] = []
    replied = idle = False
    deadline = time.monotonic() + timeout
    while not (replied and idle):
        if time.monotonic() > deadline:
            raise AssertionError(f"the kernel did not finish {code!r} in {timeout} s; output so far: {''.join(stdout)!r}")
        message = json.loads(ws.recv())
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue  # the kernel's start-up status messages, others' replies
        kind, content = message["msg_type"], message["content"]
        if kind == "stream" and content.get("name") == "stdout":
            stdout.append(content["text"])
        elif kind == "error":
            raise AssertionError(f"{code!r} failed in the kernel:\n" + "\n".join(content["traceback"]))
        elif kind == "execute_reply":
            replied = True
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
    return "".join(stdout)


# --- SSH -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SshClient:
    """The OpenSSH client with a throwaway key, its own known_hosts and no user configuration."""

    key: Path
    known_hosts: Path

    @classmethod
    def make(cls, directory: Path) -> SshClient:
        key = directory / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pytorch-cuda-test", "-f", str(key)],
                       check=True, timeout=30)
        return cls(key=key, known_hosts=directory / "known_hosts")

    @property
    def public_key(self) -> str:
        return self.key.with_suffix(".pub").read_text().strip()

    def argv(self, port: int, *command: str, user: str = "pytorch", options: tuple[str, ...] = ()) -> list[str]:
        return [
            "ssh", "-F", "/dev/null", "-i", str(self.key), "-p", str(port),
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=accept-new",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            *options, f"{user}@127.0.0.1", *command,
        ]

    def run(self, port: int, *command: str, timeout: float = 300, input: str | None = None, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(port, *command, **kwargs), capture_output=True, text=True,
                              timeout=timeout, input=input)

    def wait(self, port: int, timeout: float = 60) -> None:
        """Until a login succeeds."""
        wait_for(lambda: True if self.run(port, "true", timeout=15).returncode == 0 else None,
                 timeout, f"ssh login on port {port}", interval=0.2)


def host_key_fingerprint(port: int) -> str:
    """'ssh-ed25519 SHA256:...' of the key the server at 127.0.0.1:port offers, read with paramiko."""
    with contextlib.closing(paramiko.Transport(("127.0.0.1", port))) as transport:
        transport.start_client(timeout=15)
        key = transport.get_remote_server_key()
        digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
        return f"{key.get_name()} SHA256:{digest}"


# --- docker compose ------------------------------------------------------------------------------

class ComposeProject:
    """`docker compose` on our compose files under a unique project name, with ports Docker picks."""

    def __init__(self, env: dict[str, str], files: tuple[Path, ...] = COMPOSE_FILES, name: str | None = None) -> None:
        self.name = name or unique("pytorch-cuda-test")
        self.files = files
        # Only what we set: a JUPYTER_TOKEN or PYTORCH_CUDA_TAG in the caller's shell must not leak in.
        inherited = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG")}
        self.env = {**inherited, "BIND_ADDRESS": "127.0.0.1", "JUPYTER_PORT": "0", "SSH_PORT": "0", **env}

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["docker", "compose", "-p", self.name]
        for file in self.files:
            argv += ["-f", str(file)]
        result = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout, env=self.env, cwd=REPO)
        if check:
            assert result.returncode == 0, f"docker compose {' '.join(args)}: {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def up(self, *services: str, wait: bool = True, timeout: float = 180) -> None:
        """Start; with `wait`, until every started service is healthy (the first check runs 5 s in)."""
        waiting = ("--wait", "--wait-timeout", str(int(timeout))) if wait else ()
        self("up", "-d", *waiting, *services, timeout=timeout + 60)

    def port(self, service: str, container_port: int) -> int:
        return int(self("port", service, str(container_port)).stdout.strip().rsplit(":", 1)[1])

    def containers(self) -> list[str]:
        """Every container of this project, running or not (also ones compose no longer tracks)."""
        result = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.name}"],
                                capture_output=True, text=True, timeout=60, check=True)
        return result.stdout.split()

    def volumes(self) -> list[str]:
        result = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.name}"],
                                capture_output=True, text=True, timeout=60, check=True)
        return result.stdout.split()

    def down(self, volumes: bool = False) -> None:
        self("down", "--remove-orphans", "-t", "5", *(["-v"] if volumes else []))


@contextlib.contextmanager
def compose_project(env: dict[str, str], files: tuple[Path, ...] = COMPOSE_FILES) -> Iterator[ComposeProject]:
    """A compose project that is always taken down with its volumes, its log printed on failure."""
    project = ComposeProject(env, files)
    try:
        yield project
    except BaseException:
        with contextlib.suppress(Exception):
            print(f"--- log of compose project {project.name} ---\n" + project("logs", "--tail", "60", check=False).stdout,
                  file=sys.stderr)
        raise
    finally:
        project("down", "-v", "--remove-orphans", "-t", "2", check=False)


def compose_missing() -> str | None:
    """Why `docker compose` cannot run here (no docker CLI, or no Compose v2 plugin), or None."""
    try:
        done = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        return f"no docker CLI ({type(err).__name__})"
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        return f"no `docker compose` plugin ({said[0] if said else 'exit ' + str(done.returncode)}): .ci/run installs it"
    return None


def have_gpu() -> bool:
    """An NVIDIA GPU the host can see (the container runtime then hands it to containers)."""
    if shutil.which("nvidia-smi") is None:
        return False
    with contextlib.suppress(Exception):
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    return False


# For tests that need a GPU: decided when they are collected, so that a machine without one does not
# build the images such a test uses only to skip in its body.
needs_gpu = pytest.mark.skipif(not have_gpu(), reason="no GPU: nvidia-smi sees none on this machine")
