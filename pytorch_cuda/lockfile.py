"""Reading a lock file: its digest and its exact pins. Pure file reading; lock.py resolves and writes them."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from verify.packages import canonical  # the one package-name rule (PEP 503)

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
# The packages that make up the image's CUDA torch: a `pip install` that replaced one of them
# would leave torch with other CUDA libraries than it was built and verified with.
CUDA_STACK_NAMES = frozenset({"torch", "torchvision", "torchaudio", "triton", "pytorch-triton"})
CUDA_STACK_PREFIXES = ("nvidia-", "cuda-")


def digest(path: Path) -> str:
    """'sha256:<hex>' of a lock file, or '' when there is none yet."""
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def pins(path: Path) -> dict[str, str]:
    """name -> exact version of every package a lock pins ({} when there is no lock yet)."""
    return pins_of(path.read_text()) if path.exists() else {}


def pins_of(text: str) -> dict[str, str]:
    """name -> exact version of every package pinned in a lock's text."""
    found = {}
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            found[canonical(match.group(1))] = match.group(2)
    return found


def is_cuda_stack(name: str) -> bool:
    return name in CUDA_STACK_NAMES or name.startswith(CUDA_STACK_PREFIXES)


def component_version(locked: dict[str, str], component: str) -> str | None:
    """The locked version of an NVIDIA component under any CUDA naming ('nvidia-cublas', '-cu12', '-cu13')."""
    pattern = re.compile(rf"^{re.escape(component)}(-cu\d+)?$")
    hits = sorted(version for name, version in locked.items() if pattern.match(name))
    return hits[0] if len(hits) == 1 else None


def entries(text: str) -> dict[str, str]:
    """name -> its entry (the pin line and its `--hash` continuation lines, newline-ended) of every package a
    lock's text pins, in the lock's order."""
    found: dict[str, list[str]] = {}
    entry: list[str] | None = None
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            entry = found.setdefault(canonical(match.group(1)), [])
            entry.append(line)
        elif entry is not None and line[:1].isspace():
            entry.append(line)
        else:
            entry = None  # a comment or a blank line ends an entry
    return {name: "\n".join(lines) + "\n" for name, lines in found.items()}
