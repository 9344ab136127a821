"""Which CUDA libraries a process really loaded, and the two ways an install goes wrong.

1. Shadowing: a directory in LD_LIBRARY_PATH (say /usr/local/cuda/lib64) holds another cuDNN or
   NCCL, and the loader takes it instead of the one torch's wheels ship under site-packages.
2. Mixed CUDA majors: nvidia-*-cu11 and nvidia-*-cu12 wheels installed side by side write into the
   same site-packages/nvidia/<lib>/ directories and overwrite each other.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Sequence, Set, Tuple

from verify.packages import canonical

# libcudnn.so.9, libcudnn_graph.so.9, libnccl.so.2, libcublasLt.so.12, libcudart.so.12 ...
_LIBRARY = re.compile(r"/(?P<file>lib(?P<family>cudnn|nccl|cublasLt|cublas|cudart)(?:_[A-Za-z0-9_]+)?\.so[.\d]*)$")
_CUDA_WHEEL = re.compile(r"^nvidia-(?P<component>[a-z0-9-]+?)-cu(?P<major>\d+)$")


def libraries_from_maps(maps_text: str) -> Dict[str, List[str]]:
    """Loaded CUDA libraries by family ('libcudnn', 'libnccl', ...) from /proc/<pid>/maps text."""
    found: Dict[str, List[str]] = {}
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        path = parts[5].strip()
        match = _LIBRARY.search(path)
        if match:
            paths = found.setdefault(f"lib{match.group('family')}", [])
            if path not in paths:
                paths.append(path)
    return found


def _normal(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def shadowed_libraries(libraries: Dict[str, List[str]], ld_library_path: str,
                       trusted_roots: Iterable[str]) -> List[Tuple[str, str]]:
    """(library path, LD_LIBRARY_PATH entry) for each library taken from LD_LIBRARY_PATH instead of
    from under a trusted root (torch's package or site-packages/nvidia)."""
    roots = [_normal(root).rstrip(os.sep) + os.sep for root in trusted_roots if root]
    entries = [(entry, _normal(entry)) for entry in ld_library_path.split(os.pathsep) if entry]
    shadowed = []
    for paths in libraries.values():
        for path in paths:
            real = _normal(path)
            if any(real.startswith(root) for root in roots):
                continue
            directory = os.path.dirname(real)
            for entry, normal in entries:
                if directory == normal:
                    shadowed.append((path, entry))
                    break
    return shadowed


def cuda_wheel_conflicts(distribution_names: Iterable[str]) -> Tuple[List[str], Dict[str, List[str]]]:
    """Return (conflicts, by_major) for the installed nvidia-*-cuNN wheels.

    conflicts: components installed for two CUDA majors at once (nvidia-cudnn-cu11 and -cu12),
    which overwrite each other's files. by_major: wheel names grouped by CUDA major.
    """
    components: Dict[str, Set[str]] = {}
    by_major: Dict[str, List[str]] = {}
    for raw in distribution_names:
        name = canonical(raw.strip())
        match = _CUDA_WHEEL.match(name)
        if not match:
            continue
        components.setdefault(match.group("component"), set()).add(match.group("major"))
        by_major.setdefault(match.group("major"), []).append(name)
    conflicts = [
        " and ".join(f"nvidia-{component}-cu{major}" for major in sorted(majors))
        for component, majors in sorted(components.items()) if len(majors) > 1
    ]
    return conflicts, {major: sorted(names) for major, names in sorted(by_major.items())}


def describe_shadowing(shadowed: Sequence[Tuple[str, str]]) -> str:
    first, entry = shadowed[0]
    more = f" (and {len(shadowed) - 1} more)" if len(shadowed) > 1 else ""
    return (f"{os.path.basename(first)} is loaded from LD_LIBRARY_PATH entry {entry}, not from torch's own "
            f"packages{more}: remove {entry} from LD_LIBRARY_PATH (or unset it) so torch uses the libraries it "
            "was built and tested with")
