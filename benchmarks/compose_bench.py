"""How soon `docker compose up -d` gives a usable Jupyter and SSH server. Prints; asserts nothing.

    .venv/bin/python benchmarks/compose_bench.py [--runs 5] [--tag 2.4.1-cuda12.1]

Uses compose.yaml + compose.cpu.yaml and the images build.py made. Each run is a fresh project
(fresh volumes, so the SSH host keys are made: a first start) and measures, from the moment
`docker compose up -d` is called:
- jupyter: until an authenticated API request (GET /api/status with the token) answers 200;
- ssh: until the OpenSSH client logs in with a key and runs `true`.
Both are polled at the same time, every 50 ms. Then `down -v`. The median of the runs is printed.
"""
from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.clients import ComposeProject, SshClient, jupyter_get  # noqa: E402

POLL_S = 0.05
GIVE_UP_S = 120.0


def _poll(probe, started: float, results: dict, name: str) -> None:
    """Record the seconds from `started` until `probe()` is true (None if it never is)."""
    while time.monotonic() - started < GIVE_UP_S:
        try:
            if probe():
                results[name] = time.monotonic() - started
                return
        except Exception:  # refused, reset, not listening yet
            pass
        time.sleep(POLL_S)
    results[name] = None


def one_run(tag: str, client: SshClient, workdir: Path) -> dict[str, float | None]:
    token = secrets.token_urlsafe(24)
    # The host ports are fixed per run (Docker picks them only at `up`, which is what we time).
    project = ComposeProject({"PYTORCH_CUDA_TAG": tag, "PUBLIC_KEY": client.public_key, "JUPYTER_TOKEN": token,
                              "JUPYTER_PORT": str(_free_port()), "SSH_PORT": str(_free_port())})
    known_hosts = workdir / f"known_hosts-{project.name}"
    ssh = SshClient(key=client.key, known_hosts=known_hosts)
    jupyter_url = f"http://127.0.0.1:{project.env['JUPYTER_PORT']}"
    ssh_port = int(project.env["SSH_PORT"])
    results: dict[str, float | None] = {}
    try:
        started = time.monotonic()
        pollers = [
            threading.Thread(target=_poll, args=(
                lambda: jupyter_get(jupyter_url, "/api/status", token, timeout=1).status_code == 200,
                started, results, "jupyter")),
            threading.Thread(target=_poll, args=(
                lambda: ssh.run(ssh_port, "true", timeout=10).returncode == 0, started, results, "ssh")),
        ]
        for poller in pollers:
            poller.start()
        project("up", "-d")
        results["up -d returned"] = time.monotonic() - started
        for poller in pollers:
            poller.join()
    finally:
        project("down", "-v", "--remove-orphans", "-t", "5", check=False)
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fmt(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:6.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tag", default="2.4.1-cuda12.1", help="PYTORCH_CUDA_TAG (default: %(default)s)")
    args = parser.parse_args()

    names = ("up -d returned", "jupyter", "ssh")
    runs: list[dict[str, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="compose-bench-") as tmp:
        client = SshClient.make(Path(tmp))
        for number in range(1, args.runs + 1):
            result = one_run(args.tag, client, Path(tmp))
            runs.append(result)
            print(f"run {number}: " + ", ".join(f"{n} {_fmt(result.get(n))}" for n in names), flush=True)
    print(f"\nmedian of {args.runs} runs, from `docker compose up -d` (compose.yaml + compose.cpu.yaml, fresh volumes):")
    for name in names:
        values = [r[name] for r in runs if r.get(name) is not None]
        median = statistics.median(values) if len(values) == len(runs) else None
        label = {"jupyter": "Jupyter answers an authenticated API call", "ssh": "SSH accepts a key login and runs a command",
                 "up -d returned": "`up -d` returns"}[name]
        print(f"  {label:45s} {_fmt(median)}")


if __name__ == "__main__":
    main()
