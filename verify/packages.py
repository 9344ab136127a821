"""The image's CUDA torch packages as installed vs as locked. Standard library only: it must work when
torch itself no longer imports, which is exactly when a replaced NVIDIA wheel needs naming."""
from __future__ import annotations

import importlib.metadata
import re
from typing import Dict, List, Mapping, Optional, Tuple

from verify import versions


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> Dict[str, str]:
    """canonical name -> version of every distribution this interpreter sees."""
    found: Dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist.version)
    return found


def changed(locked: Mapping[str, str], installed: Mapping[str, str]) -> List[Tuple[str, str, Optional[str]]]:
    """(name, locked version, installed version or None) of every locked package that is not as locked."""
    return [(name, version, installed.get(canonical(name))) for name, version in sorted(locked.items())
            if installed.get(canonical(name)) is None or not versions.same_version(version, installed[canonical(name)])]
