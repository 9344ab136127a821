"""One at a time on this host: a named lock that every build.py (and test worker) of this user shares.

Two builds started together (two terminals, parallel CI jobs, test workers) must not both make the
same base image or download the same wheels; the second waits, then finds the work done.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path


def lock_dir(environ: dict[str, str] | None = None) -> Path:
    """$XDG_RUNTIME_DIR/pytorch-cuda, else ~/.cache/pytorch-cuda/locks: private to this user."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get("XDG_RUNTIME_DIR"):
        return Path(environ["XDG_RUNTIME_DIR"]) / "pytorch-cuda"
    return Path.home() / ".cache" / "pytorch-cuda" / "locks"


@contextlib.contextmanager
def held(name: str, directory: Path | None = None, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the lock `name` (any text: it becomes a file name) for the block; waits while another holds it,
    calling `on_wait` first (so a user knows why nothing moves)."""
    directory = directory or lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".lock")
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
