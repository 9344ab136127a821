"""Turn each torch release of an index into one matrix entry.

One entry per (torch, CUDA, index): the pins from every python wheel's metadata, the arch list and
``torch/version.py`` read by Range from the newest python's wheel, the matching torchvision and
torchaudio, the drivers. Releases are read in parallel threads; index pages and metadata are
fetched once and shared.

The entry's top-level facts are the Linux x86_64 (``linux/amd64``) wheels'. Its ``arm64`` key says
what the same release's Linux aarch64 (``linux/arm64``) wheels on the same index give, read the same
way with ``platform_machine == "aarch64"``: ``null`` where they pin no NVIDIA package (PyPI's
aarch64 wheels are CPU-only before torch 2.11) or none exist, else an object with ``archs``,
``archs_source``, ``cuda_runtime``, ``nvidia_packages``, ``pythons`` and ``triton``. Its CUDA must be
the entry's ``cuda``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Any, Iterable, Mapping, Sequence

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from . import RefreshError, crosschecks
from .pins import (
    AARCH64,
    ARCH_MEMBER,
    DEVEL_WHEEL_EXTRAS,
    INSPECTION_WHEELS,
    VERSION_MEMBER,
    X86_64,
    CompanionMatcher,
    DevelTable,
    DriverTable,
    component_pin,
    cuda_from_runtime,
    cuda_of_version_py,
    devel_from_apt,
    devel_from_wheels,
    extra_pins,
    find_arch_list,
    is_final,
    nvidia_pins,
    public_version,
    release_of,
    select_wheels,
    sort_pythons,
    triton_pin,
)
from .wheelmeta import (
    PYPI_SIMPLE,
    Http,
    HttpError,
    IndexFile,
    MetadataReader,
    RemoteWheel,
    WheelMetaError,
    parse_wheel_filename,
    project_files,
)

logger = logging.getLogger(__name__)

#: Above this the arch list is not read (the entry says so): 7-10 MB in 2.1 .. 2.15 wheels.
ARCH_MEMBER_MAX_COMPRESSED = 60 * 1024 * 1024
COMPANIONS = ("torchvision", "torchaudio")


@dataclasses.dataclass
class TorchRelease:
    version: str  # as in the file names, local label included ("2.4.1+cu121")
    index: str
    wheels: dict[str, IndexFile]  # python -> Linux x86_64 wheel
    aarch64_wheels: dict[str, IndexFile] = dataclasses.field(default_factory=dict)  # python -> Linux aarch64 wheel

    def wheels_for(self, machine: str) -> dict[str, IndexFile]:
        return self.aarch64_wheels if machine == AARCH64 else self.wheels


@dataclasses.dataclass(frozen=True)
class ReleasePins:
    """What a CUDA release's metadata pins, the same for each of its python wheels."""

    pythons: list[str]
    nvidia: dict[str, str]
    runtime: str
    cuda: str
    triton: str | None


def build_key(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    return (entry["torch"], entry["cuda"], entry["index"])


def sort_builds(builds: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """PEP 440 order of torch, then CUDA, then index name: the file's order."""
    return sorted(builds, key=lambda b: (Version(b["torch"]), Version(b["cuda"]), b["index"]))


class Refresher:
    """Turns one index's torch releases into matrix entries."""

    def __init__(
        self,
        indexes: Mapping[str, str],
        drivers: DriverTable,
        http: Http | None = None,
        jobs: int = 8,
        devel: DevelTable | None = None,
    ) -> None:
        self.indexes = {name: url.rstrip("/") for name, url in indexes.items()}
        self.drivers = drivers
        self.devel_table = devel
        self.http = http or Http()
        self.meta = MetadataReader(self.http)
        self.jobs = jobs
        self._files: dict[tuple[str, str], list[IndexFile]] = {}
        self._companions: dict[tuple[str, str], CompanionMatcher] = {}
        self._lock = threading.RLock()

    # -- index access
    def files(self, index: str, project: str) -> list[IndexFile]:
        key = (index, canonicalize_name(project))
        with self._lock:  # worker threads look up cuda-toolkit; fetch each page once
            if key not in self._files:
                self._files[key] = project_files(self.indexes[index], key[1], self.http)
            return self._files[key]

    def files_anywhere(self, index: str, project: str) -> list[IndexFile]:
        """The project's files on ``index``, else on PyPI (per-CUDA indexes mirror few)."""
        try:
            files = self.files(index, project)
        except HttpError as exc:
            if exc.status != 404:
                raise
            files = []
        if not files and self.indexes[index] != PYPI_SIMPLE:
            logger.info("%s not on %s, using PyPI", project, index)
            with self._lock:
                key = ("", canonicalize_name(project))
                if key not in self._files:
                    self._files[key] = project_files(PYPI_SIMPLE, key[1], self.http)
                files = self._files[key]
        return files

    def meta_package(self, index: str, name: str, version: str) -> str:
        """Metadata of a pure-python meta-package (``cuda-toolkit==13.0.2``).

        Versions compare as PEP 440 does: the pin ``13.0.3`` is met by ``13.0.3.0``.
        """
        spec = SpecifierSet(f"=={version}")
        hits = []
        for f in self.files_anywhere(index, name):
            w = parse_wheel_filename(f.filename)
            if w and not f.yanked and spec.contains(w.version, prereleases=True):
                hits.append((Version(w.version), f.filename, f))
        if not hits:
            raise RefreshError(f"{name}=={version} has no wheel on {index} or PyPI")
        return self.meta.metadata(max(hits, key=lambda h: h[:2])[2])

    def releases(self, index: str, since: str, only: Sequence[str] = ()) -> list[TorchRelease]:
        grouped = select_wheels(self.files(index, "torch"), "torch")
        aarch64 = select_wheels(self.files(index, "torch"), "torch", AARCH64)
        floor = Version(since)
        out = []
        for version, wheels in grouped.items():
            if not is_final(version) or Version(public_version(version)) < floor:
                continue
            if only and public_version(version) not in only:
                continue
            out.append(TorchRelease(version, index, wheels, aarch64.get(version, {})))
        return sorted(out, key=lambda r: Version(r.version))

    def companion(self, index: str, project: str) -> CompanionMatcher:
        key = (index, project)
        if key not in self._companions:
            self._companions[key] = CompanionMatcher(
                project,
                self.files_anywhere(index, project),
                self.meta.metadata,
                same_version_fallback=(project == "torchaudio"),
            )
        return self._companions[key]

    def read_wheel_members(self, wheel: IndexFile) -> tuple[list[str] | None, str, str | None]:
        """(archs, archs_source, cuda of torch/version.py) read by Range from one wheel."""
        remote = RemoteWheel(wheel.url, self.http)
        version_py_cuda = None
        if VERSION_MEMBER in remote.names():
            version_py_cuda = cuda_of_version_py(remote.read(VERSION_MEMBER).decode())
        if ARCH_MEMBER not in remote.names():
            return None, f"not found: {wheel.filename} has no {ARCH_MEMBER}", version_py_cuda
        info = remote.info(ARCH_MEMBER)
        if info.compress_size > ARCH_MEMBER_MAX_COMPRESSED:
            return None, (
                f"not read: {ARCH_MEMBER} is {info.compress_size} bytes compressed"
            ), version_py_cuda
        archs = find_arch_list(remote.read(ARCH_MEMBER))
        logger.debug("%s: read %d bytes by Range", wheel.filename, remote.fetched)
        if archs is None:
            return None, f"not found: no single arch-list string in {ARCH_MEMBER}", version_py_cuda
        crosschecks.arch_tokens_valid(wheel.filename, archs)
        return archs, ARCH_MEMBER, version_py_cuda

    # -- one release
    def read_pins(self, rel: TorchRelease, machine: str = X86_64) -> ReleasePins | None:
        """The pins of every python wheel for ``machine``, checked to agree; None for a CPU-only
        release (or one with no wheel for that machine)."""
        wheels = rel.wheels_for(machine)
        pythons = sort_pythons(wheels)
        label = rel.version if machine == X86_64 else f"{rel.version} ({machine})"
        per_python: dict[str, dict[str, str]] = {}
        tritons: set[str] = set()

        def expand(name: str, version: str, extras: frozenset[str]) -> str:
            return self.meta_package(rel.index, name, version)

        for py in pythons:
            text = self.meta.metadata(wheels[py])
            per_python[py] = nvidia_pins(text, py, expand, machine)
            pin = triton_pin(text, py, machine)
            if pin:
                tritons.add(pin)
        if not any(per_python.values()):
            logger.info("torch %s on %s pins no NVIDIA package: not a CUDA build", label, rel.index)
            return None
        nvidia = crosschecks.nvidia_pins_agree(label, rel.index, per_python)
        runtime = crosschecks.runtime_pin(label, nvidia)
        cuda = cuda_from_runtime(runtime)
        triton = crosschecks.single_triton_pin(label, tritons)
        return ReleasePins(pythons, nvidia, runtime, cuda, triton)

    def build(self, rel: TorchRelease) -> dict[str, Any] | None:
        """The matrix entry of one torch release, or None for a CPU-only release."""
        pins = self.read_pins(rel)
        if pins is None:
            return None
        archs, archs_source, version_py_cuda = self.read_wheel_members(rel.wheels[pins.pythons[-1]])
        crosschecks.cuda_agrees(rel.version, pins.cuda, version_py_cuda)
        return self.entry(rel, pins, archs, archs_source, self.arm64(rel, pins.cuda))

    def arm64(self, rel: TorchRelease, cuda: str) -> dict[str, Any] | None:
        """The entry's ``arm64`` value: what the release's Linux aarch64 wheels give, read as the
        x86_64 ones are; None where they pin no NVIDIA package or there are none."""
        pins = self.read_pins(rel, AARCH64)
        if pins is None:
            return None
        archs, archs_source, version_py_cuda = self.read_wheel_members(rel.aarch64_wheels[pins.pythons[-1]])
        crosschecks.machine_cuda_agrees(rel.version, AARCH64, cuda, pins.cuda, version_py_cuda)
        return {
            "archs": archs,
            "archs_source": archs_source,
            "cuda_runtime": pins.runtime,
            "nvidia_packages": dict(sorted(pins.nvidia.items())),
            "pythons": pins.pythons,
            "triton": pins.triton,
        }

    def entry(
        self, rel: TorchRelease, pins: ReleasePins, archs: list[str] | None, archs_source: str,
        arm64: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The entry as the file holds it, with exactly ``pytorch_cuda.matrix.ENTRY_KEYS``."""
        torch_version = public_version(rel.version)
        vision = self.companion(rel.index, "torchvision").match(torch_version)
        audio = self.companion(rel.index, "torchaudio").match(torch_version)
        entry = {
            "torch": torch_version,
            "cuda": pins.cuda,
            "index": rel.index,
            "pythons": pins.pythons,
            "torchvision": vision.version and public_version(vision.version),
            "torchvision_match": vision.how,
            "torchaudio": audio.version and public_version(audio.version),
            "torchaudio_match": audio.how,
            "triton": pins.triton,
            "cuda_runtime": pins.runtime,
            "cudnn": component_pin(pins.nvidia, "nvidia-cudnn"),
            "nccl": component_pin(pins.nvidia, "nvidia-nccl"),
            "cublas": component_pin(pins.nvidia, "nvidia-cublas"),
            "nvidia_packages": dict(sorted(pins.nvidia.items())),
            "archs": archs,
            "archs_source": archs_source,
            "toolkit_driver": self.drivers.toolkit_driver(pins.cuda),
            "driver_floor": self.drivers.floor(pins.cuda),
            "devel": self.devel(rel, pins),
            "arm64": arm64,
        }
        crosschecks.entry_keys_exact(entry)
        return entry

    # -- the devel image's compiler
    def devel(self, rel: TorchRelease, pins: ReleasePins) -> dict[str, Any]:
        """The CUDA compiler that matches this release exactly, as the devel image installs it."""
        python = pins.pythons[-1]
        if "cuda-toolkit" in pins.nvidia:  # CUDA 13: the compiler is in PyPI's wheels
            version = pins.nvidia["cuda-toolkit"]
            extras = extra_pins(self.meta_package(rel.index, "cuda-toolkit", version), python, DEVEL_WHEEL_EXTRAS)
            nvcc = release_of(extras["nvidia-cuda-nvcc"])
            return devel_from_wheels(version, extras, {name: self.first_release(rel.index, name, nvcc)
                                                       for name in INSPECTION_WHEELS})
        if self.devel_table is None:
            raise RefreshError("a CUDA 12 devel entry needs images/cuda_devel.json")
        release, extras = self.toolkit_release(rel.index, python, pins)
        return devel_from_apt(pins.cuda, release, extras, self.devel_table)

    def toolkit_release(self, index: str, python: str, pins: ReleasePins) -> tuple[str, dict[str, str]]:
        """The cuda-toolkit release on PyPI whose runtime and cuBLAS are torch's (newest if several)."""
        major = pins.cuda.split(".")[0]
        wanted = {f"nvidia-cuda-runtime-cu{major}": release_of(pins.runtime)}
        cublas = component_pin(pins.nvidia, "nvidia-cublas")
        if cublas:
            wanted[f"nvidia-cublas-cu{major}"] = release_of(cublas)
        candidates = sorted({w.version for f in self.files_anywhere(index, "cuda-toolkit")
                             if (w := parse_wheel_filename(f.filename)) and not f.yanked
                             and w.version.startswith(f"{pins.cuda}.") and is_final(w.version)}, key=Version)
        for version in reversed(candidates):
            extras = extra_pins(self.meta_package(index, "cuda-toolkit", version), python,
                                ("cccl", "cublas", "cudart", "nvcc"))
            if all(release_of(extras.get(name, "")) == value for name, value in wanted.items()):
                return version, extras
        raise RefreshError(f"no cuda-toolkit {pins.cuda}.x on PyPI pins the runtime {pins.runtime} torch pins")

    def first_release(self, index: str, project: str, at_least: str) -> str:
        """The oldest final release of ``project`` of the same major at or after ``at_least``."""
        floor, major = Version(at_least), Version(at_least).major
        versions = sorted({Version(w.version) for f in self.files_anywhere(index, project)
                           if (w := parse_wheel_filename(f.filename)) and not f.yanked and is_final(w.version)})
        fitting = [v for v in versions if v.major == major and v >= floor]
        if not fitting:
            raise RefreshError(f"{project} has no {major}.x release at or after {at_least}")
        return str(fitting[0])

    # -- everything
    def run(self, since: str, only: Sequence[str] = ()) -> list[dict[str, Any]]:
        releases = [r for index in self.indexes for r in self.releases(index, since, only)]
        if only and not releases:
            raise RefreshError(f"no torch release {', '.join(only)} on {', '.join(self.indexes)}")
        logger.info("%d torch releases to read", len(releases))
        # Companion matching shares caches: load the project pages before the threads start.
        for index in self.indexes:
            for project in COMPANIONS:
                self.companion(index, project)
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.jobs) as pool:
            results = list(pool.map(self._build_logged, releases))
        builds = [b for b in results if b is not None]
        crosschecks.no_duplicate_keys(build_key(b) for b in builds)
        return sort_builds(builds)

    def _build_logged(self, rel: TorchRelease) -> dict[str, Any] | None:
        start = time.monotonic()
        try:
            entry = self.build(rel)
        except (WheelMetaError, RefreshError) as exc:
            raise RefreshError(f"torch {rel.version} on {rel.index}: {exc}") from exc
        logger.info("torch %s on %s: %s (%.1f s)", rel.version, rel.index,
                    f"CUDA {entry['cuda']}" if entry else "no CUDA", time.monotonic() - start)
        return entry
