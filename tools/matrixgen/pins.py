"""Read pins out of wheel metadata: pure functions, no network.

What a torch wheel promises is in its ``Requires-Dist`` lines, evaluated for Linux on one machine
(x86_64, the default, or aarch64 for the ``arm64`` entry key) and the wheel's own Python; the GPU
architectures and the CUDA version are strings inside two of its members. Index access and the
order of reading live in ``entries``; this module only parses, so every rule here is tested on
literal text.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from . import RefreshError
from .wheelmeta import IndexFile, parse_wheel_filename, requires_dist

logger = logging.getLogger(__name__)

#: Where ``torch._C._cuda_getArchFlags()`` gets its compile-time string (torch/csrc/cuda/Module.cpp
#: is compiled into libtorch_python.so). 7-10 MB compressed in 2.1 .. 2.15 wheels.
ARCH_MEMBER = "torch/lib/libtorch_python.so"
VERSION_MEMBER = "torch/version.py"

#: A run of space-separated ``sm_XX`` / ``compute_XX`` tokens ending a C string (NUL). The start
#: is not anchored: the linker may place it right after a string_view literal with no NUL.
_ARCH_LIST_RE = re.compile(rb"((?:sm|compute)_\d+[a-z]?(?: (?:sm|compute)_\d+[a-z]?)+)\x00")

#: The machines a wheel is read for: ``platform_machine`` in markers, the suffix of wheel platform tags.
X86_64 = "x86_64"
AARCH64 = "aarch64"

#: Marker environment of a Linux CPython on x86_64; python_version and the machine are filled per wheel.
LINUX_CPYTHON_ENV = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": X86_64,
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
}

#: Packages whose extras are expanded: torch >= 2.11 (CUDA 13) pins ``cuda-toolkit[cudart,...]``.
EXPANDED_META_PACKAGES = frozenset({"cuda-toolkit"})
TRITON_PACKAGES = ("triton", "pytorch-triton")


# ---------------------------------------------------------------- requirements


def marker_env(python: str, machine: str = X86_64) -> dict[str, str]:
    """Marker environment for a Linux CPython ``python`` ("3.12") on ``machine`` (x86_64, aarch64)."""
    return {**LINUX_CPYTHON_ENV, "platform_machine": machine, "python_version": python,
            "python_full_version": f"{python}.0"}


def applicable_requirements(
    metadata_text: str, python: str, extras: Iterable[str] = (), machine: str = X86_64
) -> list[Requirement]:
    """The ``Requires-Dist`` entries that apply on Linux ``machine`` with ``python`` and ``extras``."""
    env = marker_env(python, machine)
    wanted = sorted(set(extras)) or [""]
    out = []
    for line in requires_dist(metadata_text):
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise RefreshError(f"unparsable Requires-Dist {line!r}: {exc}") from None
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in wanted):
            out.append(req)
    return out


def exact_pin(req: Requirement) -> str | None:
    """The version of an ``==``/``===`` pin (``13.0.96.*`` kept as is), else None."""
    specs = list(req.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "==="):
        return specs[0].version
    return None


def is_nvidia_package(name: str) -> bool:
    name = canonicalize_name(name)
    return name.startswith("nvidia-") or name in EXPANDED_META_PACKAGES


def nvidia_pins(
    metadata_text: str,
    python: str,
    expand: Callable[[str, str, frozenset[str]], str] | None = None,
    machine: str = X86_64,
) -> dict[str, str]:
    """Exact pins of NVIDIA packages that apply on Linux ``machine``.

    ``expand(name, version, extras)`` returns the metadata of a pinned meta-package (CUDA 13's
    ``cuda-toolkit``); its own NVIDIA pins for those extras, on the same machine, are added.
    """
    pins: dict[str, str] = {}
    for req in applicable_requirements(metadata_text, python, machine=machine):
        name = canonicalize_name(req.name)
        version = exact_pin(req)
        if version is None or not is_nvidia_package(name):
            continue
        pins[name] = version
        if name in EXPANDED_META_PACKAGES and req.extras and expand is not None:
            sub = expand(name, version, frozenset(req.extras))
            for sub_req in applicable_requirements(sub, python, req.extras, machine):
                sub_version = exact_pin(sub_req)
                sub_name = canonicalize_name(sub_req.name)
                if sub_version is not None and is_nvidia_package(sub_name):
                    pins.setdefault(sub_name, sub_version)
    return pins


def triton_pin(metadata_text: str, python: str, machine: str = X86_64) -> str | None:
    for req in applicable_requirements(metadata_text, python, machine=machine):
        if canonicalize_name(req.name) in TRITON_PACKAGES:
            return exact_pin(req)
    return None


def component_pin(pins: Mapping[str, str], base: str) -> str | None:
    """The pin of ``base`` under any CUDA naming: ``nvidia-cudnn-cu12``, ``-cu13`` or bare."""
    rx = re.compile(rf"^{re.escape(base)}(?:-cu\d+)?$")
    hits = sorted((name, version) for name, version in pins.items() if rx.match(name))
    if len(hits) > 1:
        raise RefreshError(f"several pins for {base}: {hits}")
    return hits[0][1] if hits else None


def cuda_from_runtime(pin: str) -> str:
    """``12.1.105`` -> ``12.1``; ``13.0.96.*`` -> ``13.0``."""
    m = re.match(r"^(\d+)\.(\d+)(?:\.|$)", pin)
    if not m:
        raise RefreshError(f"cannot read a CUDA version from runtime pin {pin!r}")
    return f"{m.group(1)}.{m.group(2)}"


# ---------------------------------------------------------------------- wheels


def python_of_tag(tag: str) -> str | None:
    """``cp310`` -> ``3.10``; None for anything else (``cp313t`` is not an interpreter tag)."""
    m = re.fullmatch(r"cp(\d)(\d+)", tag)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def is_linux(platform: str, machine: str) -> bool:
    """Whether a wheel platform tag (``manylinux_2_28_aarch64``, ``linux_x86_64``) is Linux on ``machine``."""
    return platform == f"linux_{machine}" or (
        platform.startswith("manylinux") and platform.endswith(f"_{machine}")
    )


def is_linux_x86_64(platform: str) -> bool:
    return is_linux(platform, X86_64)


def public_version(version: str) -> str:
    return version.split("+", 1)[0]


def is_final(version: str) -> bool:
    return re.fullmatch(r"\d+(?:\.\d+)*", public_version(version)) is not None


def select_wheels(
    files: Iterable[IndexFile], project: str, machine: str = X86_64
) -> dict[str, dict[str, IndexFile]]:
    """Group a project's Linux CPython wheels for ``machine``: version -> python -> wheel.

    Free-threaded (``cp313t``) and ``abi3`` wheels are left out, yanked files too. Where one
    version has several builds for a python (``torch-2.10.0-3-cp312-...``), the highest build
    tag wins, as pip would choose.
    """
    project = canonicalize_name(project)
    best: dict[str, dict[str, tuple[Any, IndexFile]]] = {}
    for f in files:
        if f.yanked:
            continue
        w = parse_wheel_filename(f.filename)
        if w is None or canonicalize_name(w.name) != project:
            continue
        if not any(is_linux(p, machine) for p in w.platforms):
            continue
        for py_tag in w.pythons:
            python = python_of_tag(py_tag)
            if python is None or py_tag not in w.abis:
                continue
            slot = best.setdefault(w.version, {})
            if python not in slot or w.build > slot[python][0]:
                slot[python] = (w.build, f)
    return {v: {py: bf[1] for py, bf in pys.items()} for v, pys in best.items()}


def sort_pythons(pythons: Iterable[str]) -> list[str]:
    return sorted(set(pythons), key=lambda p: tuple(int(x) for x in p.split(".")))


# --------------------------------------------------------------------- members


def find_arch_list(data: bytes) -> list[str] | None:
    """The arch list compiled into libtorch_python.so, or None unless exactly one candidate.

    Candidates are NUL-terminated strings of two or more ``sm_XX``/``compute_XX`` tokens.
    """
    found = {m.group(1).decode("ascii") for m in _ARCH_LIST_RE.finditer(data)}
    if len(found) != 1:
        if found:
            logger.warning("several arch-list candidates: %s", sorted(found))
        return None
    return found.pop().split()


def cuda_of_version_py(text: str) -> str | None:
    m = re.search(r"^cuda(?:\s*:\s*[^=]+)?\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return m.group(1) if m else None


# --------------------------------------------------------------------- drivers


@dataclasses.dataclass(frozen=True)
class DriverTable:
    """``images/cuda_drivers.json``: NVIDIA's Linux x86_64 driver of each CUDA release, and per
    CUDA major the floor of minor version compatibility (the oldest driver that runs it at all)."""

    toolkit: Mapping[str, str]  # "12.4" -> "550.54.14"
    floors: Mapping[str, str]  # "12" -> "525.60.13"

    def toolkit_driver(self, cuda: str) -> str | None:
        return self.toolkit.get(cuda)

    def floor(self, cuda: str) -> str | None:
        return self.floors.get(cuda.split(".")[0])


def read_drivers(path: Path) -> DriverTable:
    data = json.loads(path.read_text())
    return DriverTable(dict(data["toolkit_driver"]), dict(data["minor_version_compatibility"]))


# ----------------------------------------------------------------------- devel

#: The extras of ``cuda-toolkit`` that make a compiler: nvcc (with crt and nvvm) and the CCCL headers.
DEVEL_WHEEL_EXTRAS = ("cccl", "nvcc")
#: Binary inspection tools; PyPI carries them from CUDA 13.2 on, so a 13.0 image takes the first of its major.
INSPECTION_WHEELS = ("nvidia-cuda-cuobjdump", "nvidia-cuda-nvdisasm")


def extra_pins(metadata_text: str, python: str, extras: Iterable[str]) -> dict[str, str]:
    """name -> pinned version of what ``extras`` of a meta-package add (its extra-marked lines only)."""
    pins: dict[str, str] = {}
    for req in applicable_requirements(metadata_text, python, extras):
        version = exact_pin(req)
        if req.marker is not None and version is not None:
            pins[canonicalize_name(req.name)] = version
    return pins


def release_of(pin: str) -> str:
    """``13.0.88.*`` -> ``13.0.88``: the release a wildcard pin names."""
    return pin[:-2] if pin.endswith(".*") else pin


@dataclasses.dataclass(frozen=True)
class DevelTable:
    """``images/cuda_devel.json``: NVIDIA's apt repository for CUDA 12 compilers, and the component
    versions PyPI's metadata does not state (cuobjdump, nvdisasm), per CUDA release."""

    apt_key: str
    apt_key_fingerprint: str
    # "12.1.1" -> {"apt_repository": URL, "cuda_cuobjdump": "12.1.111", "cuda_crt": ..., ...}
    components: Mapping[str, Mapping[str, str]]


def read_devel(path: Path) -> DevelTable:
    data = json.loads(path.read_text())
    return DevelTable(data["apt_key"], data["apt_key_fingerprint"],
                      {release: dict(parts) for release, parts in data["components"].items()})


def devel_from_wheels(toolkit_version: str, extras: Mapping[str, str], tools: Mapping[str, str]) -> dict[str, Any]:
    """A CUDA 13 devel image: PyPI's NVIDIA wheels carry the whole compiler. ``extras`` are the pins the
    release's cuda-toolkit gives its compiler extras; the lock leaves out what the runtime already has."""
    return {
        "toolkit": release_of(extras["nvidia-cuda-nvcc"]),
        "toolkit_release": toolkit_version,
        "pip": sorted([*(f"{name}=={version}" for name, version in extras.items()),
                       *(f"{name}=={version}" for name, version in tools.items())]),
        "apt": {},
    }


def devel_from_apt(cuda: str, release: str, extras: Mapping[str, str], table: DevelTable) -> dict[str, Any]:
    """A CUDA 12 devel image: nvcc, the runtime's headers and CCCL from NVIDIA's apt repository at the
    versions of the cuda-toolkit ``release`` whose runtime torch pins (NVIDIA's packages are versioned
    ``<component version>-1``)."""
    major, minor = cuda.split(".")[:2]
    suffix = f"{major}-{minor}"
    wheel = {name: release_of(version) for name, version in extras.items()}
    if release not in table.components:
        raise RefreshError(f"images/cuda_devel.json states no cuobjdump/nvdisasm versions for CUDA {release}")
    parts = table.components[release]
    versions = {
        f"cuda-nvcc-{suffix}": wheel[f"nvidia-cuda-nvcc-cu{major}"],
        f"cuda-cudart-dev-{suffix}": wheel[f"nvidia-cuda-runtime-cu{major}"],
        f"cuda-cccl-{suffix}": wheel[f"nvidia-cuda-cccl-cu{major}"],
        **{f"{part.replace('_', '-')}-{suffix}": version for part, version in parts.items() if part.startswith("cuda_")},
    }
    return {
        "toolkit": versions[f"cuda-nvcc-{suffix}"],
        "toolkit_release": release,
        "pip": [],
        "apt": {name: f"{version}-1" for name, version in sorted(versions.items())},
        "apt_repository": parts["apt_repository"],
        "apt_key": table.apt_key,
        "apt_key_fingerprint": table.apt_key_fingerprint,
    }


# ------------------------------------------------------------------ companions


@dataclasses.dataclass(frozen=True)
class Match:
    version: str | None
    how: str


class CompanionMatcher:
    """Find the torchvision/torchaudio release that goes with a torch release.

    Rule: the newest release whose metadata pins ``torch==<version>`` exactly, searching from
    the newest down and stopping at the first release pinning an older torch. torchaudio
    releases after 2.10 pin no torch at all; for those, and only with ``same_version_fallback``,
    the release whose version equals torch's is taken.
    """

    def __init__(
        self,
        project: str,
        files: Sequence[IndexFile],
        metadata: Callable[[IndexFile], str],
        same_version_fallback: bool = False,
    ) -> None:
        self.project = project
        self.metadata = metadata
        self.same_version_fallback = same_version_fallback
        grouped = select_wheels(files, project)
        self.candidates: dict[str, IndexFile] = {}
        for version, by_python in grouped.items():
            if is_final(version):
                self.candidates[version] = by_python[sort_pythons(by_python)[-1]]
        # torchvision >= 0.29 ships py3-none wheels: one wheel for all pythons.
        for f in files:
            w = parse_wheel_filename(f.filename)
            if (
                w and not f.yanked and canonicalize_name(w.name) == canonicalize_name(project)
                and is_final(w.version) and w.version not in self.candidates
                and any(is_linux_x86_64(p) for p in w.platforms)
                and "none" in w.abis and any(t.startswith("py3") for t in w.pythons)
            ):
                self.candidates[w.version] = f
        self._order = sorted(self.candidates, key=Version, reverse=True)

    def torch_pin(self, version: str) -> tuple[str | None, bool]:
        """(pinned torch version or None, whether any torch requirement exists)."""
        text = self.metadata(self.candidates[version])
        for line in requires_dist(text):
            req = Requirement(line)
            if canonicalize_name(req.name) == "torch":
                pin = exact_pin(req)
                return (public_version(pin) if pin else None), True
        return None, False

    def match(self, torch_version: str) -> Match:
        target = Version(public_version(torch_version))
        for version in self._order:
            pin, _ = self.torch_pin(version)
            if pin is None:
                continue
            if Version(pin) == target:
                return Match(version, f"{self.project} {version} pins torch=={pin}")
            if Version(pin) < target:
                break
        if self.same_version_fallback:
            for version in self._order:
                if Version(public_version(version)) == target:
                    pin, has_req = self.torch_pin(version)
                    if pin is None and not has_req:
                        return Match(
                            version,
                            f"{self.project} {version}: same version as torch; its metadata "
                            "pins no torch",
                        )
        return Match(None, f"no {self.project} release pins torch=={public_version(torch_version)}")
