"""The compatibility matrix: typed records loaded from images/*.json, and version resolution.

The same `MatrixEntry` objects feed rendering, tagging, the CLI's --list and the tests, so there is
one list of what exists (images/matrix.json, regenerated from wheel metadata by tools/matrixgen).
The file's schema is defined here once (SCHEMA, ENTRY_KEYS, PLATFORM_BUILD_KEYS); the generator and
the tests use it.

An entry's top-level facts (pins, archs, pythons) are those of the release's Linux x86_64 wheels, the
linux/amd64 image. Its `arm64` key is null where the same release's Linux aarch64 wheels on the same
index are not CUDA builds (PyPI's are CPU-only before torch 2.11) or do not exist; else it holds what
those wheels give, read from their metadata the same way: `archs`, `archs_source`, `cuda_runtime`,
`nvidia_packages` (markers evaluated for aarch64), `pythons` and `triton`. Its CUDA is the entry's
`cuda` (the generator checks it). The devel image's compiler (`devel`) is the x86_64 one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from verify import versions

from .errors import IncompatibleCombination, MatrixError, UnknownVersion, UsageError

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout: templates, images and build contexts
IMAGES_DIR = REPO_ROOT / "images"
MATRIX_FILE = IMAGES_DIR / "matrix.json"
BASES_FILE = IMAGES_DIR / "bases.json"
VARIANTS_FILE = IMAGES_DIR / "variants.json"
PYPI = "pypi"
PYPI_URL = "https://pypi.org/simple"
# of images/matrix.json; 2: min_driver became toolkit_driver, driver_floor was added; 3: devel; 4: arm64 (the
# release's Linux aarch64 wheels where they are CUDA builds, else null; no other value changed)
SCHEMA = 4
AMD64 = "linux/amd64"
ARM64 = "linux/arm64"
PLATFORMS = (AMD64, ARM64)  # Docker platforms, in the order a multi-platform build lists them
# Every key of a matrix.json entry: the MatrixEntry fields plus what the generator records of how it
# matched companions and found the archs (kept for review, not used by builds).
ENTRY_KEYS = frozenset({
    "torch", "cuda", "index", "pythons", "torchvision", "torchvision_match", "torchaudio", "torchaudio_match",
    "triton", "cuda_runtime", "cudnn", "nccl", "cublas", "nvidia_packages", "archs", "archs_source",
    "toolkit_driver", "driver_floor", "devel", "arm64",
})
# Every key of an entry's `arm64` object, where it is not null.
PLATFORM_BUILD_KEYS = frozenset({"archs", "archs_source", "cuda_runtime", "nvidia_packages", "pythons", "triton"})


def minor_of(version: str) -> str:
    """'2.4.1' -> '2.4'."""
    return ".".join(version.split(".")[:2])


@dataclass(frozen=True)
class Base:
    """A base image that provides one Python version (baseimage.py can make Debian ones offline)."""

    python: str
    image: str


@dataclass(frozen=True)
class PlatformBuild:
    """A release's CUDA wheels for another platform than linux/amd64 (so far linux/arm64): same torch,
    same index, same CUDA as its entry; pins, pythons and archs as that platform's wheels state them."""

    pythons: tuple[str, ...]
    cuda_runtime: str
    triton: str | None
    nvidia_packages: Mapping[str, str] = field(compare=False)
    archs: tuple[str, ...] | None  # None where the wheel's arch list could not be read


@dataclass(frozen=True)
class MatrixEntry:
    """One torch release built for one CUDA line, from one wheel index."""

    torch: str
    cuda: str
    index: str
    index_url: str
    pythons: tuple[str, ...]
    torchvision: str | None
    torchaudio: str | None
    triton: str | None
    cuda_runtime: str
    cudnn: str
    nccl: str
    cublas: str
    nvidia_packages: Mapping[str, str] = field(compare=False)
    archs: tuple[str, ...] | None
    # The CUDA compiler of this release for the devel image: its version ('toolkit'), and either PyPI
    # wheels ('pip': CUDA 13) or NVIDIA apt packages ('apt': package -> version, CUDA 12).
    devel: Mapping[str, Any] = field(compare=False)
    toolkit_driver: str  # the Linux driver of this CUDA release
    driver_floor: str  # the oldest driver that runs this CUDA major (minor version compatibility)
    arm64: PlatformBuild | None  # the release's linux/arm64 CUDA wheels; None where it has none

    @property
    def torch_minor(self) -> str:
        return minor_of(self.torch)

    @property
    def platforms(self) -> tuple[str, ...]:
        """The Docker platforms this release has CUDA wheels for: linux/amd64, and linux/arm64 where `arm64`."""
        return PLATFORMS if self.arm64 is not None else (AMD64,)

    @property
    def requirements(self) -> tuple[str, ...]:
        """What the runtime lock resolves; the nvidia-* libraries follow from torch's own exact pins.

        pip and setuptools too: the venv would otherwise keep the ones Debian's ensurepip seeded it
        with (pip 23.0, setuptools 66 on bookworm, both with fixed vulnerabilities), unlocked.
        """
        pins = [f"torch=={self.torch}"]
        if self.torchvision:
            pins.append(f"torchvision=={self.torchvision}")
        if self.torchaudio:
            pins.append(f"torchaudio=={self.torchaudio}")
        return (*pins, "pip", "setuptools")

    def short(self) -> str:
        return f"torch {self.torch} / CUDA {self.cuda} ({self.index})"

    def on(self, platform: str) -> MatrixEntry:
        """This release as its wheels for `platform` state it: that platform's pins, Pythons and archs."""
        if platform == AMD64:
            return self
        if platform == ARM64 and self.arm64 is not None:
            wheels = self.arm64
            return replace(self, pythons=wheels.pythons, cuda_runtime=wheels.cuda_runtime, triton=wheels.triton,
                           nvidia_packages=wheels.nvidia_packages, archs=wheels.archs)
        raise UsageError(f"{self.short()} has no CUDA wheels for {platform}")


@dataclass(frozen=True)
class Matrix:
    builds: tuple[MatrixEntry, ...]
    bases: Mapping[str, Base]
    default_python: str
    variant_packages: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    # -- queries ---------------------------------------------------------------------------
    def cuda_versions(self) -> list[str]:
        return sorted({b.cuda for b in self.builds}, key=versions.parse_version)

    def torch_versions(self) -> list[str]:
        return sorted({b.torch for b in self.builds}, key=versions.parse_version)

    def lines_on(self, platform: str) -> str:
        """'CUDA 13.0 (torch 2.11.0 to 2.14.1), CUDA 13.2 (torch 2.15.0)': what `platform` has, for messages."""
        by_cuda: dict[str, list[str]] = {}
        for build in self.builds_on(platform):
            by_cuda.setdefault(build.cuda, []).append(build.torch)
        parts = []
        for cuda in sorted(by_cuda, key=versions.parse_version):
            torches = sorted(by_cuda[cuda], key=versions.parse_version)
            span = torches[0] if len(torches) == 1 else f"{torches[0]} to {torches[-1]}"
            parts.append(f"CUDA {cuda} (torch {span})")
        return ", ".join(parts) or "none"

    def builds_on(self, platform: str) -> list[MatrixEntry]:
        """The builds with CUDA wheels for a Docker `platform` ("linux/arm64"), in the file's order."""
        if platform not in PLATFORMS:
            raise UsageError(f"platform {platform} is not one of {', '.join(PLATFORMS)}")
        return [b for b in self.builds if platform in b.platforms]

    def newest_per_tag(self) -> list[MatrixEntry]:
        """One build per (torch, CUDA): PyPI's wheels win over a per-CUDA index's copy."""
        chosen: dict[tuple[str, str], MatrixEntry] = {}
        for build in self.builds:
            key = (build.torch, build.cuda)
            if key not in chosen or (build.index == PYPI and chosen[key].index != PYPI):
                chosen[key] = build
        return sorted(chosen.values(), key=lambda b: (versions.parse_version(b.torch), versions.parse_version(b.cuda)))

    def is_newest_of_minor(self, build: MatrixEntry) -> bool:
        """Whether `build` is the newest patch of its torch minor for its CUDA (gets the vX.Y alias)."""
        same = [b.torch for b in self.builds if b.cuda == build.cuda and b.torch_minor == build.torch_minor]
        return max(same, key=versions.parse_version) == build.torch

    def python_for(self, build: MatrixEntry, python: str | None) -> str:
        """The Python an image of `build` uses: asked for, else the default, else the newest we can base on."""
        if python is not None:
            if python not in self.bases:
                raise UnknownVersion("Python", python, sorted(self.bases, key=versions.parse_version))
            if python not in build.pythons:
                raise IncompatibleCombination(
                    f"Python {python} with {build.short()}",
                    [f"torch {build.torch} has wheels for Python {', '.join(build.pythons)}"],
                )
            return python
        usable = [p for p in self.bases if p in build.pythons]
        if not usable:
            raise IncompatibleCombination(
                f"{build.short()} on any base image we can make",
                [f"wheels exist for Python {', '.join(build.pythons)}; bases provide {', '.join(self.bases)}"],
            )
        if self.default_python in usable:
            return self.default_python
        return max(usable, key=versions.parse_version)

    # -- resolution ------------------------------------------------------------------------
    def select(self, cuda: str | None = None, torch: str | None = None, python: str | None = None,
               every_tag: bool = False) -> list[MatrixEntry]:
        """What a command line asks for: one build (`--cuda`/`--torch`), or with `every_tag` (`--all`)
        every tag of the matrix, narrowed by `cuda` and `torch` when given."""
        if every_tag:
            builds = [b for b in self.newest_per_tag()
                      if (not cuda or b.cuda == cuda) and (not torch or torch in (b.torch, b.torch_minor))]
            if not builds:
                self.resolve(cuda=cuda, torch=torch)  # raises the precise error
            return builds
        if not (cuda or torch):
            raise UsageError("say what to build: --cuda VERSION, --torch VERSION or --all (see --list)")
        return [self.resolve(cuda=cuda, torch=torch, python=python)]

    def resolve(self, cuda: str | None = None, torch: str | None = None, python: str | None = None) -> MatrixEntry:
        """Pick the one build a user means.

        `--cuda` alone: the newest torch built for that CUDA, PyPI's wheels before a per-CUDA index
        (PyPI is what every mirror carries). `--torch` may be a release ("2.4.1") or a minor ("2.4").
        """
        candidates = self._narrow(cuda, torch)
        if python is not None:
            fitting = [b for b in candidates if python in b.pythons]
            if not fitting:
                if python not in self.bases:
                    raise UnknownVersion("Python", python, sorted(self.bases, key=versions.parse_version))
                raise IncompatibleCombination(
                    _describe(cuda, torch, python), [f"{b.short()}: Python {', '.join(b.pythons)}" for b in candidates]
                )
            candidates = fitting
        return max(candidates, key=lambda b: (b.index == PYPI, versions.parse_version(b.torch), versions.parse_version(b.cuda)))

    def _narrow(self, cuda: str | None, torch: str | None) -> list[MatrixEntry]:
        builds = list(self.builds)
        if cuda is not None:
            if cuda not in {b.cuda for b in builds}:
                raise UnknownVersion("CUDA", cuda, self.cuda_versions())
            builds = [b for b in builds if b.cuda == cuda]
        if torch is not None:
            known = {b.torch for b in self.builds} | {b.torch_minor for b in self.builds}
            matching = [b for b in builds if torch in (b.torch, b.torch_minor)]
            if not matching:
                if torch not in known:
                    raise UnknownVersion("torch", torch, self.torch_versions())
                torches = sorted({b.torch for b in builds}, key=versions.parse_version)
                cudas = sorted({b.cuda for b in self.builds if torch in (b.torch, b.torch_minor)},
                               key=versions.parse_version)
                raise IncompatibleCombination(_describe(cuda, torch, None), [
                    f"CUDA {cuda}: torch {', '.join(torches)}", f"torch {torch}: CUDA {', '.join(cudas)}"])
            builds = matching
        return builds


def _describe(cuda: str | None, torch: str | None, python: str | None) -> str:
    parts = []
    if torch:
        parts.append(f"torch {torch}")
    if cuda:
        parts.append(f"CUDA {cuda}")
    if python:
        parts.append(f"Python {python}")
    return " with ".join(parts)


def _platform_build_from_json(value: Mapping[str, Any] | None) -> PlatformBuild | None:
    if value is None:
        return None
    if set(value) != PLATFORM_BUILD_KEYS:
        raise ValueError(f"arm64 keys {sorted(value)}, schema {SCHEMA} has {sorted(PLATFORM_BUILD_KEYS)}")
    return PlatformBuild(
        pythons=tuple(value["pythons"]),
        cuda_runtime=value["cuda_runtime"],
        triton=value["triton"],
        nvidia_packages=dict(value["nvidia_packages"]),
        archs=tuple(value["archs"]) if value["archs"] else None,
    )


def _build_from_json(entry: Mapping[str, Any], indexes: Mapping[str, str]) -> MatrixEntry:
    return MatrixEntry(
        torch=entry["torch"],
        cuda=entry["cuda"],
        index=entry["index"],
        index_url=indexes[entry["index"]],
        pythons=tuple(entry["pythons"]),
        torchvision=entry.get("torchvision"),
        torchaudio=entry.get("torchaudio"),
        triton=entry.get("triton"),
        cuda_runtime=entry["cuda_runtime"],
        cudnn=entry["cudnn"],
        nccl=entry["nccl"],
        cublas=entry["cublas"],
        nvidia_packages=dict(entry["nvidia_packages"]),
        archs=tuple(entry["archs"]) if entry.get("archs") else None,
        devel=dict(entry["devel"]),
        toolkit_driver=entry["toolkit_driver"],
        driver_floor=entry["driver_floor"],
        arm64=_platform_build_from_json(entry["arm64"]),
    )


def load(matrix_file: Path = MATRIX_FILE, bases_file: Path = BASES_FILE, variants_file: Path = VARIANTS_FILE) -> Matrix:
    """Read the committed matrix, base-image table and the variants' extra packages."""
    try:
        data = json.loads(Path(matrix_file).read_text())
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')}, this code reads schema {SCHEMA}")
        bases_data = json.loads(Path(bases_file).read_text())
        variants_data = json.loads(Path(variants_file).read_text())
        indexes = data["indexes"]
        builds = tuple(_build_from_json(entry, indexes) for entry in data["builds"])
        bases = {
            python: Base(python=python, image=spec["image"])
            for python, spec in bases_data["bases"].items()
        }
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MatrixError(
            f"cannot read the matrix ({type(err).__name__}: {err}); regenerate it with `python -m tools.matrixgen`"
        ) from None
    return Matrix(
        builds=builds,
        bases=bases,
        default_python=bases_data["default_python"],
        variant_packages={name: tuple(spec["pip"]) for name, spec in variants_data.items()},
    )
