"""Version strings: parsing, comparing, and decoding the integers libraries report."""
from __future__ import annotations

import re
from typing import Optional, Sequence, Tuple, Union

_LEADING_INT = re.compile(r"\d+")
_RELEASE = re.compile(r"^\d+(\.\d+)*$")
# "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023"
# "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build  (...)"
_NVRM_VERSION = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)\b")


def parse_version(text: str) -> Tuple[int, ...]:
    """The numeric release of a version: '2.4.1+cu121' -> (2, 4, 1), '2.5.0a0' -> (2, 5, 0).

    A local label (after '+') and pre-release suffixes are dropped: the manifest states releases.
    """
    release = text.strip().split("+", 1)[0]
    parts = []
    for piece in release.split("."):
        match = _LEADING_INT.match(piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    if not parts:
        raise ValueError(f"not a version: {text!r}")
    return tuple(parts)


def same_release(expected: str, actual: str) -> bool:
    """Whether two versions agree on the parts both state: '12.1' matches '12.1.105'.

    This is how the manifest's cuDNN '9.1.0.70' (a pip version) meets torch's runtime 9.1.0.
    """
    want, have = parse_version(expected), parse_version(actual)
    common = min(len(want), len(have))
    return want[:common] == have[:common]


def at_least(actual: str, minimum: str) -> bool:
    """Whether `actual` >= `minimum`, missing parts counting as zero ('535.104' >= '530.30.02')."""
    have, want = parse_version(actual), parse_version(minimum)
    width = max(len(have), len(want))
    return have + (0,) * (width - len(have)) >= want + (0,) * (width - len(want))


def same_version(locked: str, installed: str) -> bool:
    """'13.0.3' and '13.0.3.0' are one release (PEP 440 pads with zeros); a local label must match."""
    if locked == installed:
        return True
    (want, want_local), (have, have_local) = (v.partition("+")[::2] for v in (locked, installed))
    if not (_RELEASE.match(want) and _RELEASE.match(have)):  # pre-releases and the like: exactly
        return False
    left, right = parse_version(want), parse_version(have)
    width = max(len(left), len(right))
    return left + (0,) * (width - len(left)) == right + (0,) * (width - len(right)) and want_local == have_local


def cudnn_version_string(code: Optional[int]) -> Optional[str]:
    """torch.backends.cudnn.version() as text: 90100 -> '9.1.0', 8902 -> '8.9.2'.

    cuDNN 9 encodes major*10000 + minor*100 + patch; cuDNN 8 and older major*1000 + minor*100 + patch.
    """
    if code is None:
        return None
    if code >= 10000:
        major, rest = divmod(code, 10000)
    else:
        major, rest = divmod(code, 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def nccl_version_string(version: Union[int, Sequence[Union[int, str]], None]) -> Optional[str]:
    """torch.cuda.nccl.version() as text: (2, 20, 5) -> '2.20.5'; old integer codes decoded too."""
    if version is None:
        return None
    if isinstance(version, int):
        # NCCL >= 2.9 encodes major*10000 + minor*100 + patch; older releases major*1000 + ...
        major, rest = divmod(version, 10000) if version >= 10000 else divmod(version, 1000)
        minor, patch = divmod(rest, 100)
        return f"{major}.{minor}.{patch}"
    numbers = [str(part) for part in version[:3]]
    suffix = "".join(str(part) for part in version[3:])
    return ".".join(numbers) + suffix


def parse_driver_version(text: str) -> Optional[str]:
    """The driver version in /proc/driver/nvidia/version or in `nvidia-smi` output, or None."""
    match = _NVRM_VERSION.search(text)
    if match:
        return match.group(1)
    for line in text.splitlines():
        line = line.strip()
        if re.fullmatch(r"\d+\.\d+(?:\.\d+)?", line):
            return line
    return None
