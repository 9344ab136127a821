"""The image's CUDA torch packages as installed vs as locked. Standard library only: it must work when
torch itself no longer imports, which is exactly when a replaced NVIDIA wheel needs naming."""
from __future__ import annotations

import importlib.metadata
import re
from typing import Dict, List, Mapping, Optional, Tuple

from verify import versions

_RELEASE = re.compile(r"^\d+(\.\d+)*$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> Dict[str, str]:
    """canonical name -> version of every distribution this interpreter sees."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist.version)
    return found


def same_version(locked: str, installed: str) -> bool:
    """'13.0.3' and '13.0.3.0' are one release (PEP 440 pads with zeros); a local label must match."""
    if locked == installed:
        return True
    (want, want_local), (have, have_local) = (v.partition("+")[::2] for v in (locked, installed))
    if not (_RELEASE.match(want) and _RELEASE.match(have)):  # pre-releases and the like: exactly
        return False
    left, right = versions.parse_version(want), versions.parse_version(have)
    width = max(len(left), len(right))
    return left + (0,) * (width - len(left)) == right + (0,) * (width - len(right)) and want_local == have_local


def changed(locked: Mapping[str, str], installed: Mapping[str, str]) -> List[Tuple[str, str, Optional[str]]]:
    """(name, locked version, installed version or None) of every locked package that is not as locked."""
    return [(name, version, installed.get(canonical(name))) for name, version in sorted(locked.items())
            if installed.get(canonical(name)) is None or not same_version(version, installed[canonical(name)])]
