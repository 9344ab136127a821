"""Regenerate ``images/matrix.json`` from the real metadata of torch wheels.

Every value in the matrix comes from an index or a wheel, never from memory:

* the torch releases and their CPython tags: the simple API project page (PEP 691 JSON, or
  PEP 503 HTML for indexes such as https://download.pytorch.org/whl/cu121);
* the CUDA library pins: ``Requires-Dist`` of the wheel's core metadata (PEP 658, else the
  wheel's ``METADATA`` read by HTTP Range requests), evaluated for Linux x86_64. CUDA 13
  builds pin ``cuda-toolkit[...]`` instead of ``nvidia-*-cu12`` packages; that meta-package's
  own metadata is expanded for the requested extras;
* the GPU architectures: the string behind ``torch._C._cuda_getArchFlags()``, which is
  compiled into ``torch/lib/libtorch_python.so``; only that member is read, by Range requests;
* ``torch/version.py`` (also read by Range) cross-checks the CUDA version;
* the drivers: ``images/cuda_drivers.json``, transcribed from NVIDIA's release notes: the driver
  of each CUDA release, and the floor of each CUDA major (minor version compatibility).

Run ``python -m pytorch_cuda.refresh --help``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as dt
import json
import logging
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from pytorch_cuda.wheelmeta import (
    PYPI_SIMPLE,
    Http,
    HttpError,
    IndexFile,
    MetadataReader,
    RemoteWheel,
    WheelMetaError,
    parse_wheel_filename,
    project_files,
    requires_dist,
)

logger = logging.getLogger(__name__)

SCHEMA = 2  # 2: min_driver became toolkit_driver, and driver_floor was added
GENERATED_BY = "python -m pytorch_cuda.refresh"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "images" / "matrix.json"
DEFAULT_DRIVERS = REPO_ROOT / "images" / "cuda_drivers.json"
DEFAULT_SINCE = "2.1"

#: Where ``torch._C._cuda_getArchFlags()`` gets its compile-time string (torch/csrc/cuda/Module.cpp
#: is compiled into libtorch_python.so). 7-10 MB compressed in 2.1 .. 2.15 wheels.
ARCH_MEMBER = "torch/lib/libtorch_python.so"
ARCH_MEMBER_MAX_COMPRESSED = 60 * 1024 * 1024
VERSION_MEMBER = "torch/version.py"

#: A run of space-separated ``sm_XX`` / ``compute_XX`` tokens ending a C string (NUL). The start
#: is not anchored: the linker may place it right after a string_view literal with no NUL.
_ARCH_LIST_RE = re.compile(rb"((?:sm|compute)_\d+[a-z]?(?: (?:sm|compute)_\d+[a-z]?)+)\x00")
_ARCH_TOKEN_RE = re.compile(r"^(?:sm|compute)_\d+[a-z]?$")

#: Marker environment of a Linux x86_64 CPython; python_version is filled per wheel.
LINUX_X86_64_ENV = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
}

#: Packages whose extras are expanded: torch >= 2.11 (CUDA 13) pins ``cuda-toolkit[cudart,...]``.
EXPANDED_META_PACKAGES = frozenset({"cuda-toolkit"})
TRITON_PACKAGES = ("triton", "pytorch-triton")
COMPANIONS = ("torchvision", "torchaudio")


class RefreshError(Exception):
    """The matrix could not be regenerated; the message says which release and why."""


# ---------------------------------------------------------------- pure helpers


def marker_env(python: str) -> dict[str, str]:
    """Marker environment for a Linux x86_64 CPython ``python`` ("3.12")."""
    return {**LINUX_X86_64_ENV, "python_version": python, "python_full_version": f"{python}.0"}


def applicable_requirements(
    metadata_text: str, python: str, extras: Iterable[str] = ()
) -> list[Requirement]:
    """The ``Requires-Dist`` entries that apply on Linux x86_64 with ``python`` and ``extras``."""
    env = marker_env(python)
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
) -> dict[str, str]:
    """Exact pins of NVIDIA packages that apply on Linux x86_64.

    ``expand(name, version, extras)`` returns the metadata of a pinned meta-package (CUDA 13's
    ``cuda-toolkit``); its own NVIDIA pins for those extras are added.
    """
    pins: dict[str, str] = {}
    for req in applicable_requirements(metadata_text, python):
        name = canonicalize_name(req.name)
        version = exact_pin(req)
        if version is None or not is_nvidia_package(name):
            continue
        pins[name] = version
        if name in EXPANDED_META_PACKAGES and req.extras and expand is not None:
            sub = expand(name, version, frozenset(req.extras))
            for sub_req in applicable_requirements(sub, python, req.extras):
                sub_version = exact_pin(sub_req)
                sub_name = canonicalize_name(sub_req.name)
                if sub_version is not None and is_nvidia_package(sub_name):
                    pins.setdefault(sub_name, sub_version)
    return pins


def triton_pin(metadata_text: str, python: str) -> str | None:
    for req in applicable_requirements(metadata_text, python):
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


def python_of_tag(tag: str) -> str | None:
    """``cp310`` -> ``3.10``; None for anything else (``cp313t`` is not an interpreter tag)."""
    m = re.fullmatch(r"cp(\d)(\d+)", tag)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def is_linux_x86_64(platform: str) -> bool:
    return platform == "linux_x86_64" or (
        platform.startswith("manylinux") and platform.endswith("_x86_64")
    )


def public_version(version: str) -> str:
    return version.split("+", 1)[0]


def is_final(version: str) -> bool:
    return re.fullmatch(r"\d+(?:\.\d+)*", public_version(version)) is not None


def version_key(version: str) -> Version:
    return Version(version)


def select_wheels(files: Iterable[IndexFile], project: str) -> dict[str, dict[str, IndexFile]]:
    """Group a project's Linux x86_64 CPython wheels: version -> python -> wheel.

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
        if not any(is_linux_x86_64(p) for p in w.platforms):
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


# ------------------------------------------------------------------- companions


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
        self._order = sorted(self.candidates, key=version_key, reverse=True)

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
        target = version_key(public_version(torch_version))
        for version in self._order:
            pin, _ = self.torch_pin(version)
            if pin is None:
                continue
            if version_key(pin) == target:
                return Match(version, f"{self.project} {version} pins torch=={pin}")
            if version_key(pin) < target:
                break
        if self.same_version_fallback:
            for version in self._order:
                if version_key(public_version(version)) == target:
                    pin, has_req = self.torch_pin(version)
                    if pin is None and not has_req:
                        return Match(
                            version,
                            f"{self.project} {version}: same version as torch; its metadata "
                            "pins no torch",
                        )
        return Match(None, f"no {self.project} release pins torch=={public_version(torch_version)}")


# ------------------------------------------------------------------------ builds


@dataclasses.dataclass
class TorchRelease:
    version: str  # as in the file names, local label included ("2.4.1+cu121")
    index: str
    wheels: dict[str, IndexFile]  # python -> wheel


class Refresher:
    """Turns one index's torch releases into matrix entries."""

    def __init__(
        self,
        indexes: Mapping[str, str],
        drivers: DriverTable,
        http: Http | None = None,
        jobs: int = 8,
    ) -> None:
        self.indexes = {name: url.rstrip("/") for name, url in indexes.items()}
        self.drivers = drivers
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
                hits.append((version_key(w.version), f.filename, f))
        if not hits:
            raise RefreshError(f"{name}=={version} has no wheel on {index} or PyPI")
        return self.meta.metadata(max(hits, key=lambda h: h[:2])[2])

    def releases(self, index: str, since: str, only: Sequence[str] = ()) -> list[TorchRelease]:
        grouped = select_wheels(self.files(index, "torch"), "torch")
        floor = version_key(since)
        out = []
        for version, wheels in grouped.items():
            if not is_final(version) or version_key(public_version(version)) < floor:
                continue
            if only and public_version(version) not in only:
                continue
            out.append(TorchRelease(version, index, wheels))
        return sorted(out, key=lambda r: version_key(r.version))

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

    # -- one release
    def build(self, rel: TorchRelease) -> dict[str, Any] | None:
        """The matrix entry of one torch release, or None for a CPU-only release."""
        pythons = sort_pythons(rel.wheels)
        per_python: dict[str, dict[str, str]] = {}
        tritons: set[str] = set()

        def expand(name: str, version: str, extras: frozenset[str]) -> str:
            return self.meta_package(rel.index, name, version)

        for py in pythons:
            text = self.meta.metadata(rel.wheels[py])
            per_python[py] = nvidia_pins(text, py, expand)
            pin = triton_pin(text, py)
            if pin:
                tritons.add(pin)
        with_pins = {py: p for py, p in per_python.items() if p}
        if not with_pins:
            logger.info("torch %s on %s pins no NVIDIA package: not a CUDA build", rel.version,
                        rel.index)
            return None
        distinct = {json.dumps(p, sort_keys=True) for p in with_pins.values()}
        if len(distinct) > 1 or len(with_pins) != len(pythons):
            raise RefreshError(
                f"torch {rel.version} on {rel.index}: NVIDIA pins differ between python wheels"
            )
        nvidia = next(iter(with_pins.values()))
        runtime = component_pin(nvidia, "nvidia-cuda-runtime")
        if runtime is None:
            raise RefreshError(f"torch {rel.version}: NVIDIA pins but no nvidia-cuda-runtime")
        cuda = cuda_from_runtime(runtime)
        if len(tritons) > 1:
            raise RefreshError(f"torch {rel.version}: several triton pins {sorted(tritons)}")

        wheel = rel.wheels[pythons[-1]]
        archs, archs_source, version_py_cuda = self.read_wheel_members(wheel)
        if version_py_cuda is not None and version_py_cuda != cuda:
            raise RefreshError(
                f"torch {rel.version}: runtime pin says CUDA {cuda}, "
                f"{VERSION_MEMBER} says {version_py_cuda}"
            )
        local = re.fullmatch(r"cu(\d+)(\d)", rel.version.partition("+")[2] or "")
        if local and f"{local.group(1)}.{local.group(2)}" != cuda:
            raise RefreshError(f"torch {rel.version}: local label disagrees with CUDA {cuda}")

        torch_version = public_version(rel.version)
        vision = self.companion(rel.index, "torchvision").match(torch_version)
        audio = self.companion(rel.index, "torchaudio").match(torch_version)
        return {
            "torch": torch_version,
            "cuda": cuda,
            "index": rel.index,
            "pythons": pythons,
            "torchvision": vision.version and public_version(vision.version),
            "torchvision_match": vision.how,
            "torchaudio": audio.version and public_version(audio.version),
            "torchaudio_match": audio.how,
            "triton": tritons.pop() if tritons else None,
            "cuda_runtime": runtime,
            "cudnn": component_pin(nvidia, "nvidia-cudnn"),
            "nccl": component_pin(nvidia, "nvidia-nccl"),
            "cublas": component_pin(nvidia, "nvidia-cublas"),
            "nvidia_packages": dict(sorted(nvidia.items())),
            "archs": archs,
            "archs_source": archs_source,
            "toolkit_driver": self.drivers.toolkit_driver(cuda),
            "driver_floor": self.drivers.floor(cuda),
        }

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
        if not all(_ARCH_TOKEN_RE.match(a) for a in archs):
            raise RefreshError(f"{wheel.filename}: odd arch list {archs}")
        return archs, ARCH_MEMBER, version_py_cuda

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
        seen: set[tuple[str, str, str]] = set()
        for b in builds:
            key = build_key(b)
            if key in seen:
                raise RefreshError(f"two builds share the key {key}")
            seen.add(key)
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


# ------------------------------------------------------------------------ output


def build_key(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    return (entry["torch"], entry["cuda"], entry["index"])


def sort_builds(builds: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        builds,
        key=lambda b: (version_key(b["torch"]), version_key(b["cuda"]), b["index"]),
    )


def render(doc: Mapping[str, Any]) -> str:
    """The file's exact text: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def merge(
    existing: Mapping[str, Any] | None,
    builds: Sequence[dict[str, Any]],
    indexes: Mapping[str, str],
    in_scope: Callable[[Mapping[str, Any]], bool],
    today: str,
) -> dict[str, Any]:
    """The new document: existing entries outside the refreshed scope are kept.

    ``generated_on`` only moves when the content changes, so a re-run gives no diff.
    """
    kept = [b for b in (existing or {}).get("builds", []) if not in_scope(b)]
    all_indexes = dict((existing or {}).get("indexes", {}))
    all_indexes.update(indexes)
    used = {b["index"] for b in kept} | {b["index"] for b in builds}
    doc = {
        "schema": SCHEMA,
        "generated_by": GENERATED_BY,
        "generated_on": today,
        "indexes": {k: v for k, v in sorted(all_indexes.items()) if k in used or k in indexes},
        "builds": sort_builds([*kept, *builds]),
    }
    if existing and existing.get("generated_on"):
        same = dict(doc, generated_on=existing["generated_on"])
        if render(same) == render(existing):
            return same
    return doc


# --------------------------------------------------------------------------- CLI


def parse_index(arg: str) -> tuple[str, str]:
    """``cu121=https://...`` -> (cu121, url); a bare URL is named after its last segment."""
    if "=" in arg and not arg.startswith(("http://", "https://")):
        name, url = arg.split("=", 1)
    else:
        url = arg
        name = "pypi" if url.rstrip("/") == PYPI_SIMPLE else url.rstrip("/").rsplit("/", 1)[-1]
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise argparse.ArgumentTypeError(f"bad index name {name!r}")
    return name, url.rstrip("/")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytorch_cuda.refresh",
        description="Regenerate images/matrix.json from torch wheel metadata.",
    )
    parser.add_argument("--since", default=DEFAULT_SINCE, help="oldest torch release (2.1)")
    parser.add_argument(
        "--index", action="append", type=parse_index, metavar="[NAME=]URL",
        help="simple index to read (repeatable); default: pypi=" + PYPI_SIMPLE,
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--drivers", type=Path, default=DEFAULT_DRIVERS)
    parser.add_argument(
        "--only-torch", action="append", default=[], metavar="VERSION",
        help="refresh only this torch release (repeatable); other entries are kept",
    )
    parser.add_argument("--jobs", type=int, default=8, help="releases read in parallel")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the output file would change")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(message)s")

    indexes = dict(args.index or [("pypi", PYPI_SIMPLE)])
    start = time.monotonic()
    try:
        version_key(args.since)
        for v in args.only_torch:
            version_key(v)
        refresher = Refresher(indexes, read_drivers(args.drivers), jobs=args.jobs)
        builds = refresher.run(args.since, args.only_torch)
    except (RefreshError, WheelMetaError, InvalidVersion, OSError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    floor = version_key(args.since)

    def in_scope(b: Mapping[str, Any]) -> bool:
        return (
            b["index"] in indexes
            and version_key(b["torch"]) >= floor
            and (not args.only_torch or b["torch"] in args.only_torch)
        )

    existing = json.loads(args.output.read_text()) if args.output.exists() else None
    doc = merge(existing, builds, indexes, in_scope, dt.date.today().isoformat())
    text = render(doc)
    old = args.output.read_text() if args.output.exists() else None
    logger.info(
        "%d builds in %.1f s; %d requests, %.1f MB; metadata: %d PEP 658, %d by Range",
        len(builds), time.monotonic() - start, refresher.http.requests,
        refresher.http.bytes / 1e6, refresher.meta.via_pep658, refresher.meta.via_range,
    )
    if args.check:
        if text != old:
            logger.error("%s is out of date", args.output)
            return 1
        return 0
    if text != old:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        logger.info("wrote %s", args.output)
    else:
        logger.info("%s unchanged", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
