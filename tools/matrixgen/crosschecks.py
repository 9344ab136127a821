"""What must agree before an entry is written; each check raises RefreshError naming the release.

A release's facts come from several places that could drift apart: one metadata file per python
wheel, the runtime pin, ``torch/version.py``, the index's local label (``+cu121``) and the same
release's aarch64 wheels. The matrix states one value for each, so a disagreement stops the run
instead of picking one.
"""

from __future__ import annotations

import json
import re
from typing import Any, Collection, Hashable, Iterable, Mapping, Sequence

from pytorch_cuda import matrix

from . import RefreshError
from .pins import VERSION_MEMBER, component_pin

_ARCH_TOKEN_RE = re.compile(r"^(?:sm|compute)_\d+[a-z]?$")


def nvidia_pins_agree(
    release: str, index: str, per_python: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """The one set of NVIDIA pins every python wheel of ``release`` states (a wheel without any
    among wheels with some counts as a difference)."""
    distinct = {json.dumps(dict(p), sort_keys=True) for p in per_python.values()}
    if len(distinct) != 1:
        raise RefreshError(f"torch {release} on {index}: NVIDIA pins differ between python wheels")
    return dict(next(iter(per_python.values())))


def runtime_pin(release: str, nvidia: Mapping[str, str]) -> str:
    """The CUDA runtime pin: the CUDA version of a build is read from it."""
    runtime = component_pin(nvidia, "nvidia-cuda-runtime")
    if runtime is None:
        raise RefreshError(f"torch {release}: NVIDIA pins but no nvidia-cuda-runtime")
    return runtime


def single_triton_pin(release: str, tritons: Collection[str]) -> str | None:
    """The triton pin shared by the python wheels that pin one, or None."""
    if len(set(tritons)) > 1:
        raise RefreshError(f"torch {release}: several triton pins {sorted(tritons)}")
    return next(iter(tritons), None)


def cuda_agrees(release: str, cuda: str, version_py_cuda: str | None) -> None:
    """The runtime pin's CUDA against ``torch/version.py`` and the local label (``2.4.1+cu121``)."""
    if version_py_cuda is not None and version_py_cuda != cuda:
        raise RefreshError(
            f"torch {release}: runtime pin says CUDA {cuda}, {VERSION_MEMBER} says {version_py_cuda}"
        )
    local = re.fullmatch(r"cu(\d+)(\d)", release.partition("+")[2] or "")
    if local and f"{local.group(1)}.{local.group(2)}" != cuda:
        raise RefreshError(f"torch {release}: local label disagrees with CUDA {cuda}")


def machine_cuda_agrees(
    release: str, machine: str, cuda: str, machine_cuda: str, version_py_cuda: str | None
) -> None:
    """The CUDA of the release's wheels for another ``machine`` (their runtime pin and their
    ``torch/version.py``) is the entry's ``cuda``, read from the x86_64 wheels: one entry, one CUDA."""
    for source, value in (("runtime pin", machine_cuda), (VERSION_MEMBER, version_py_cuda)):
        if value is not None and value != cuda:
            raise RefreshError(
                f"torch {release}: the {machine} wheel's {source} says CUDA {value}, the x86_64 wheel's {cuda}"
            )


def arch_tokens_valid(filename: str, archs: Sequence[str]) -> None:
    if not all(_ARCH_TOKEN_RE.match(a) for a in archs):
        raise RefreshError(f"{filename}: odd arch list {list(archs)}")


def entry_keys_exact(entry: Mapping[str, Any]) -> None:
    """An entry has exactly the keys of the file's schema (``pytorch_cuda.matrix.ENTRY_KEYS``, and
    ``PLATFORM_BUILD_KEYS`` in a non-null ``arm64``)."""
    missing, extra = matrix.ENTRY_KEYS - set(entry), set(entry) - matrix.ENTRY_KEYS
    if missing or extra:
        raise RefreshError(
            f"torch {entry.get('torch')}: entry keys differ from matrix.ENTRY_KEYS: "
            f"missing {sorted(missing)}, extra {sorted(extra)}"
        )
    arm64 = entry.get("arm64")
    if arm64 is not None and set(arm64) != matrix.PLATFORM_BUILD_KEYS:
        raise RefreshError(
            f"torch {entry.get('torch')}: arm64 keys {sorted(arm64)} differ from matrix.PLATFORM_BUILD_KEYS"
        )


def no_duplicate_keys(keys: Iterable[Hashable]) -> None:
    """Two builds of one (torch, CUDA, index) would make the file ambiguous."""
    seen: set[Hashable] = set()
    for key in keys:
        if key in seen:
            raise RefreshError(f"two builds share the key {key}")
        seen.add(key)
