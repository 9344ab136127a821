"""The layer plan of a runtime image: which Python packages go into which image layer, in which order.

Pure: matrix and lock pins in, an ordered tuple of layers out. The builder stage lays each layer out
as its own tree (pytorch_cuda/stage_venv.py) and the final stage copies the trees in this order, so a
node that holds one tag pulls only the layers another tag changes.

Order, most stable first: NVIDIA's libraries, then triton, then every other package torch and its
domain libraries need, then the venv itself with pip, then torch and its domain libraries, then the
verify suite. A pull reuses a layer only when every layer under it is the same too, so what changes
least sits at the bottom: two releases of one torch line (2.4.0, 2.4.1) pin the same NVIDIA wheels,
triton and other packages, and differ in torch alone.

The builder installs the wheels in three pip steps, the layers of each step staged before the next
(`pip_steps`), so that Docker's layer cache shares the first two between such tags: NVIDIA's wheels,
then triton and the other packages, then torch with pip and the venv's own files.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import lockfile
from .matrix import MatrixEntry

# One fixed modification time for every file of every component layer (2026-01-01T00:00:00Z).
# Project-wide rather than per lock: two tags that pin the same NVIDIA wheels must produce the
# same bytes, and a per-lock time would differ between them. Never change it: every layer of every
# tag would change with it.
SOURCE_DATE_EPOCH = 1767225600

TRITON = ("triton", "pytorch-triton")
TORCH = ("torch", "torchvision", "torchaudio")
# pip installs the last step's wheels from inside the venv, so it stays there until then: it goes with
# the venv's own files, not with the packages the second step stages.
PIP = "pip"
REST = "*"  # the packages no other layer names (pip), the venv's own files and anything unowned


@dataclass(frozen=True)
class Layer:
    """One component layer: its directory name in the builder's /stage, and the packages it holds."""

    name: str
    packages: tuple[str, ...]  # normalized distribution names; (REST,) for the catch-all layer
    comment: str


def is_nvidia(name: str) -> bool:
    return name.startswith(lockfile.CUDA_STACK_PREFIXES)


def nvidia_groups(builds: Sequence[MatrixEntry], build: MatrixEntry, installed: Sequence[str]) -> list[tuple[str, ...]]:
    """`build`'s NVIDIA packages grouped by the tags that share them, most widely shared first.

    Two packages share a group when every build of the matrix pins both at the same version or both
    at another (or lacks both): then any two tags that share one share the other, so one layer holds
    them with no loss of sharing. Packages this build's torch does not pin (resolved at lock time,
    such as nvjitlink for CUDA 12.1) form one last group: nothing says which tags share them.
    """
    by_pattern: dict[tuple[str | None, ...], list[str]] = {}
    unpinned = []
    for name in sorted(installed):
        if name in build.nvidia_packages:
            pattern = tuple(other.nvidia_packages.get(name) for other in builds)
            by_pattern.setdefault(pattern, []).append(name)
        else:
            unpinned.append(name)

    def sharing(item: tuple[tuple[str | None, ...], list[str]]) -> tuple[int, str]:
        pattern, names = item
        mine = build.nvidia_packages[names[0]]
        return -sum(version == mine for version in pattern), names[0]

    groups = [tuple(names) for _, names in sorted(by_pattern.items(), key=sharing)]
    if unpinned:
        groups.append(tuple(unpinned))
    return groups


def matrix_packages(build: MatrixEntry) -> set[str]:
    """The packages the matrix knows a build installs: its NVIDIA wheels, torch and its companions."""
    named = {"torchvision": build.torchvision, "torchaudio": build.torchaudio, "triton": build.triton}
    return {*build.nvidia_packages, "torch", *(name for name, version in named.items() if version)}


def component_layers(builds: Sequence[MatrixEntry], build: MatrixEntry, locked: Mapping[str, str]) -> tuple[Layer, ...]:
    """The runtime's component layers for `build`, whose runtime lock pins `locked`.

    Without a lock yet, the matrix's own view of the build stands in for it.
    """
    installed = set(locked) or matrix_packages(build)
    nvidia = sorted(name for name in installed if is_nvidia(name))
    others = tuple(sorted(installed - {*nvidia, *TRITON, *TORCH, PIP}))
    layers: list[Layer] = []

    def add(label: str, packages: tuple[str, ...], comment: str) -> None:
        layers.append(Layer(name=f"{len(layers) + 1:02d}-{label}", packages=packages, comment=comment))

    for group in nvidia_groups(builds, build, nvidia):
        add(group[0], group, f"NVIDIA: {', '.join(group)}")
    triton = tuple(name for name in TRITON if name in installed)
    if triton:
        add("triton", triton, ", ".join(triton))
    if others:
        add("python", others, "every other package the lock pins but pip")
    add("venv", (REST,), "the venv itself, pip and anything no package owns")
    torch = tuple(name for name in TORCH if name in installed)
    if torch:
        add("torch", torch, ", ".join(torch))
    return tuple(layers)


def verify_layer(after: Sequence[Layer]) -> str:
    """The stage directory of the verify suite's layer, the last one."""
    return f"{len(after) + 1:02d}-verify"


def nvidia_layers(plan: Sequence[Layer]) -> tuple[Layer, ...]:
    """The plan's NVIDIA layers (its bottom ones)."""
    return tuple(layer for layer in plan if all(is_nvidia(name) for name in layer.packages))


def pip_steps(plan: Sequence[Layer]) -> tuple[tuple[Layer, ...], ...]:
    """The layers each of the builder's pip steps installs and stages, in order; every layer in one step.

    NVIDIA's layers, then the other named ones but torch's (triton and the other packages), each step
    staged with --partial; then torch's and the catch-all, staged last. A step's cache entry is shared by
    every tag whose earlier steps and own lock are the same, so what differs between close tags (torch)
    comes last. Empty steps are left out.
    """
    nvidia = nvidia_layers(plan)
    named = tuple(layer for layer in plan if layer not in nvidia and REST not in layer.packages
                  and not set(layer.packages) & set(TORCH))
    last = tuple(layer for layer in plan if layer not in nvidia and layer not in named)
    return tuple(step for step in (nvidia, named, last) if step)
