"""The wheel cache: the wheels builds download stay on this host and serve later builds.

A CUDA image installs about 3 GB of wheels, and tags of one CUDA line pin the same NVIDIA wheels, so
a second tag, or a `--no-cache` rebuild, would download most of them again. Instead, before a build:

1. pip on the host downloads every wheel the image's lock pins, for the image's platform and Python,
   into the cache with `--require-hashes` (a file already there with the lock's hash is not
   fetched again; one with another hash is fetched anew), so nothing unverified is ever kept; a
   lock entry that a cached file already satisfies (an installable wheel whose sha256 the entry
   lists) is not even asked of the index, so a second tag looks up only the wheels it adds;
2. the build's pip reads them from a PEP 503 index that a small server on this host's loopback
   serves from the cache (the build runs with host networking), and checks every file against the
   lock's hashes again.

The index's address is fixed (`DEFAULT_PORT`), because the classic builder keys a RUN step's cache
on its build args: the same address keeps a no-change rebuild all cache hits. The server is its own
process, shared by every build.py on the host, and exits after `IDLE_EXIT_SECONDS` without a request.

The cache lives in `$PYTORCH_CUDA_WHEEL_CACHE`, else `$XDG_CACHE_HOME/pytorch-cuda/wheels`, else
`~/.cache/pytorch-cuda/wheels`; deleting that directory clears it; `build.py --no-wheel-cache` builds
without it. Standard library only: the server runs with no third-party package.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import http.server
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from verify.packages import canonical  # PEP 503's name rule, the one the image's checks use

from . import hostlock, lockfile

DEFAULT_PORT = 38741
GLIBC_MINOR = 36  # Debian bookworm, every base image of images/bases.json
IDLE_EXIT_SECONDS = 900
MARKER = "/pytorch-cuda-wheel-cache"  # what the server answers with its directory: ours, and which cache
_WHEEL_NAME = re.compile(r"^([^-]+)-")


class WheelCacheError(Exception):
    """The cache could not provide a build's wheels: the message says why, in one line."""


@dataclass(frozen=True)
class Fetch:
    """What one prefetch did: files and bytes downloaded, and files already in the cache."""

    downloaded: int
    downloaded_bytes: int
    reused: int


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    """$PYTORCH_CUDA_WHEEL_CACHE, else $XDG_CACHE_HOME/pytorch-cuda/wheels, else ~/.cache/pytorch-cuda/wheels."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get("PYTORCH_CUDA_WHEEL_CACHE"):
        return Path(environ["PYTORCH_CUDA_WHEEL_CACHE"]).expanduser()
    base = Path(environ["XDG_CACHE_HOME"]) if environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "pytorch-cuda" / "wheels"


def port(environ: dict[str, str] | None = None) -> int:
    environ = dict(os.environ) if environ is None else environ
    value = environ.get("PYTORCH_CUDA_WHEEL_CACHE_PORT", "")
    if not value:
        return DEFAULT_PORT
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise WheelCacheError(f"PYTORCH_CUDA_WHEEL_CACHE_PORT={value!r} is not a TCP port")
    return int(value)


def index_url(port_number: int) -> str:
    """The address the build's pip gets as PIP_INDEX_URL (loopback: pip trusts it over plain HTTP)."""
    return f"http://127.0.0.1:{port_number}/simple/"


def project_of(filename: str) -> str | None:
    """The normalized project of a wheel file name, or None for anything that is not a wheel."""
    match = _WHEEL_NAME.match(filename)
    return canonical(match.group(1)) if match and filename.endswith(".whl") else None


def project_page(directory: Path, project: str) -> str | None:
    """The PEP 503 page of one project: links to its cached wheels, or None when it has none."""
    files = sorted(path.name for path in directory.glob("*.whl") if project_of(path.name) == project)
    if not files:
        return None
    links = "\n".join(f'<a href="/files/{html.escape(name)}">{html.escape(name)}</a><br>' for name in files)
    return f"<!DOCTYPE html>\n<html><body>\n{links}\n</body></html>\n"


def platform_tags(architecture: str) -> list[str]:
    """The wheel platforms a Debian bookworm image (glibc 2.36) of an architecture ('amd64', 'arm64') installs,
    best first, as pip inside it would accept them (pip's --platform does not widen one tag to older glibcs)."""
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(architecture)
    if machine is None:
        raise WheelCacheError(f"no wheel platform known for architecture {architecture!r}")
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 16, -1)] + [f"manylinux2014_{machine}"]
    if machine == "x86_64":
        tags += [f"manylinux_2_{minor}_{machine}" for minor in (12, 5)] + [f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    return tags


def download_command(lock: Path, directory: Path, architecture: str, python: str, upstream: str,
                     ca_file: Path | None) -> list[str]:
    """pip download of exactly the lock's wheels for one platform and Python, hashes required."""
    abi = "cp" + python.replace(".", "")
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
               "--require-hashes", "--only-binary=:all:",
               *[arg for tag in platform_tags(architecture) for arg in ("--platform", tag)], "--python-version", python, "--implementation", "cp", "--abi", abi, "--index-url", upstream,
               "--dest", str(directory), "-r", str(lock)]
    if ca_file is not None:
        command += ["--cert", str(ca_file)]
    return command


def _wheels(directory: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime in ns) of the cached wheels: a file pip replaced changes one of them."""
    return {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in directory.glob("*.whl")}


# name-version(-build)-python-abi-platform.whl; each tag may be a dotted set (py2.py3, manylinux_2_17_x86_64.manylinux2014_x86_64).
_WHEEL_FILE = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(?:-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<platform>[^-]+)\.whl$")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def installable(filename: str, architecture: str, python: str) -> bool:
    """Whether pip in an image of `architecture` with CPython `python` ('3.11') would install this wheel file."""
    match = _WHEEL_FILE.match(filename)
    if match is None:
        return False
    major, minor = python.split(".")[:2]
    pythons, abis, platforms = (set(match.group(part).split(".")) for part in ("py", "abi", "platform"))
    if not platforms & ({"any"} | set(platform_tags(architecture))):
        return False
    if f"cp{major}{minor}" in abis and f"cp{major}{minor}" in pythons:
        return True
    if "abi3" in abis:  # the stable ABI: built for this CPython or an older one of the same major
        return any(tag.startswith(f"cp{major}") and tag[2:].isdigit() and int(tag[3:] or 0) <= int(minor)
                   for tag in pythons)
    return "none" in abis and bool(pythons & {f"py{major}", f"py{major}{minor}", f"cp{major}{minor}"})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def satisfied_entries(entries: dict[str, str], directory: Path, architecture: str, python: str) -> dict[str, str]:
    """name -> the cached file that satisfies that lock entry (lockfile.entries): its name and version, installable
    here, and a sha256 the entry lists (read from the file, never assumed). Entries left out go to pip."""
    files: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(directory.glob("*.whl")):
        match = _WHEEL_FILE.match(path.name)
        if match and installable(path.name, architecture, python):
            files.setdefault((canonical(match.group("name")), match.group("version")), []).append(path)
    found = {}
    for name, entry in entries.items():
        version = next(iter(lockfile.pins_of(entry).values()))
        hashes = set(_HASH.findall(entry))
        for path in files.get((name, version), ()):
            if _sha256(path) in hashes:
                found[name] = path.name
                break
    return found


_PIP_NAMED = re.compile(r"^\s*(?:Saved|File was already downloaded) (.+\.whl)\s*$")


def _record_path(directory: Path, lock: Path, architecture: str, python: str) -> Path:
    """Where a prefetch records the files that satisfied one lock for one platform: keyed by the lock's content."""
    key = hashlib.sha256(lock.read_bytes()).hexdigest()[:32]
    return directory / ".satisfied" / f"{key}-{architecture}-py{python}.json"


def _still_satisfied(record: Path, directory: Path) -> int | None:
    """The number of files a recorded prefetch named, when every one is still there unchanged; else None.

    pip checked each file's hash against the lock when it was recorded, and the build's pip checks it
    again; this only spares the index lookups and the hashing of gigabytes on a rebuild."""
    try:
        named = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    wheels = _wheels(directory)
    if not named or any(tuple(stamp) != wheels.get(name) for name, stamp in named.items()):
        return None
    return len(named)


def _download(entries: dict[str, str], lock: Path, directory: Path, architecture: str, python: str, upstream: str,
              ca_file: Path | None) -> list[str]:
    """pip download of these entries of `lock` (their text unchanged, hashes required); returns the files pip named."""
    # The user's pip configuration stays (proxy, certificates); extra indexes and find-links do
    # not, so the files come from the one index asked for (their hashes are checked either way).
    environ = {name: value for name, value in os.environ.items()
               if name not in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_REQUIRE_VIRTUALENV")}
    with tempfile.TemporaryDirectory(prefix=".lock-", dir=directory) as scratch:
        part = Path(scratch) / lock.name
        part.write_text("".join(entries.values()))
        done = subprocess.run(download_command(part, directory, architecture, python, upstream, ca_file),
                              capture_output=True, text=True, env=environ)
    if done.returncode != 0:
        said = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = next((line for line in reversed(said) if line.startswith("ERROR")), said[-1] if said else "")
        raise WheelCacheError(f"downloading the wheels of {lock.name} from {upstream} failed: {reason[:300]}")
    return [Path(match.group(1)).name for match in map(_PIP_NAMED.match, done.stdout.splitlines()) if match]


def prefetch(lock: Path, directory: Path, architecture: str, python: str, upstream: str,
             ca_file: Path | None = None) -> Fetch:
    """Have every wheel of `lock` for the platform in the cache, each checked against the lock's hashes."""
    record = _record_path(directory, lock, architecture, python)
    # One prefetch at a time per cache: a second build.py waits, then finds the files there.
    with hostlock.held("wheel-cache", directory):
        known = _still_satisfied(record, directory)
        if known is not None:
            return Fetch(downloaded=0, downloaded_bytes=0, reused=known)
        before = _wheels(directory)
        entries = lockfile.entries(lock.read_text())
        present = satisfied_entries(entries, directory, architecture, python)
        missing = {name: entry for name, entry in entries.items() if name not in present}
        named = list(present.values())
        if missing:
            named += _download(missing, lock, directory, architecture, python, upstream, ca_file)
        after = _wheels(directory)
        record.parent.mkdir(exist_ok=True)
        record.write_text(json.dumps({name: after[name] for name in sorted(set(named)) if name in after}))
    new = {name: size for name, (size, mtime) in after.items() if before.get(name) != (size, mtime)}
    return Fetch(downloaded=len(new), downloaded_bytes=sum(new.values()), reused=max(len(set(named)) - len(new), 0))


def _answers(port_number: int) -> str | None:
    """The cache directory of the server on this port, None when nothing (of ours) answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port_number}{MARKER}", timeout=2) as reply:
            return str(reply.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def ensure_server(directory: Path, port_number: int, say: Callable[[str], None] = print) -> str:
    """Have the cache's server answer on the loopback port; returns the index URL for builds."""
    directory.mkdir(parents=True, exist_ok=True)
    serving = _answers(port_number)
    if serving == str(directory.resolve()):
        return index_url(port_number)
    if serving is not None:
        raise WheelCacheError(f"port {port_number} serves another wheel cache ({serving}): set "
                              "PYTORCH_CUDA_WHEEL_CACHE_PORT to another port, or build with --no-wheel-cache")
    with open(directory / ".server.log", "ab") as log:  # its own session: it outlives this build.py
        subprocess.Popen([sys.executable, "-m", "pytorch_cuda.wheelcache", "serve", str(directory.resolve()),
                          "--port", str(port_number)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _answers(port_number) == str(directory.resolve()):
            say(f"wheel cache: serving {directory} at {index_url(port_number)}")
            return index_url(port_number)
        time.sleep(0.1)
    tail = (directory / ".server.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    raise WheelCacheError(f"the wheel cache's server did not start on 127.0.0.1:{port_number} ({tail[0]}): "
                          "build with --no-wheel-cache, or set PYTORCH_CUDA_WHEEL_CACHE_PORT to a free port")


class _Handler(http.server.BaseHTTPRequestHandler):
    directory: Path
    touched: list[float]

    def do_GET(self) -> None:
        self.touched[0] = time.monotonic()
        path = self.path.split("?", 1)[0]
        if path == MARKER:
            return self._reply(200, "text/plain", str(self.directory).encode())
        if path.startswith("/simple/"):
            page = project_page(self.directory, canonical(path[len("/simple/"):].strip("/")))
            if page is None:
                return self._reply(404, "text/plain", b"not in the wheel cache\n")
            return self._reply(200, "text/html", page.encode())
        if path.startswith("/files/"):
            name = path[len("/files/"):]
            file = self.directory / name
            if "/" in name or not name.endswith(".whl") or not file.is_file():
                return self._reply(404, "text/plain", b"no such file\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(file.stat().st_size))
            self.end_headers()
            with open(file, "rb") as data:
                while chunk := data.read(1 << 20):
                    self.wfile.write(chunk)
            return None
        return self._reply(404, "text/plain", b"not found\n")

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(directory: Path, port_number: int, idle_exit: float = IDLE_EXIT_SECONDS) -> None:
    """Serve the cache on 127.0.0.1 until no request came for `idle_exit` seconds."""
    touched = [time.monotonic()]
    handler = type("Handler", (_Handler,), {"directory": directory, "touched": touched})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port_number), handler)
    server.daemon_threads = True

    def stop_when_idle() -> None:
        while time.monotonic() - touched[0] < idle_exit:
            time.sleep(min(5.0, idle_exit / 4))
        server.shutdown()

    threading.Thread(target=stop_when_idle, daemon=True).start()
    server.serve_forever()
    server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytorch_cuda.wheelcache", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serving = sub.add_parser("serve", help="serve a cache directory on 127.0.0.1 (build.py starts it)")
    serving.add_argument("directory", type=Path)
    serving.add_argument("--port", type=int, default=DEFAULT_PORT)
    serving.add_argument("--idle-exit", type=float, default=IDLE_EXIT_SECONDS)
    sub.add_parser("where", help="print the cache's directory")
    args = parser.parse_args(argv)
    if args.command == "where":
        print(cache_dir())
        return 0
    serve(args.directory, args.port, args.idle_exit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
