"""What a command means in images: tags, aliases, base images, file paths, and the CI matrix.

No Docker and no network; it reads the committed lock files (their digest and pins), whose content
is part of what an image is.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import lockfile, refs
from . import variants as variant_table  # image_specs' parameter `variants` is the selection
from .errors import UsageError
from .layers import Layer, component_layers
from .matrix import AMD64, ARM64, IMAGES_DIR, Matrix, MatrixEntry
from .variants import Variant

VARIANTS = variant_table.NAMES  # every variant: rendered, locked, in the CI matrix (variants.TABLE)
# What `build.py --cuda X` builds without --variant: devel is built when asked for (CUDA 12 lines
# need NVIDIA's apt repository).
DEFAULT_VARIANTS = variant_table.DEFAULT
REPOSITORY = "pytorch-cuda"
IMAGE_USER = "pytorch"
IMAGE_UID = 1000
# The image's group is root (gid 0), as OpenShift expects of images: a container started under any
# uid gets group 0, and the venv and /workspace are group-writable, so `pip install` works for it too.
IMAGE_GID = 0
# Its home, group-writable and the image's ENV HOME: a uid with no passwd entry (OpenShift) gets it too.
IMAGE_HOME = f"/home/{IMAGE_USER}"
# The image config's USER, numeric: Kubernetes' runAsNonRoot can check a number, never a name.
IMAGE_USER_SPEC = f"{IMAGE_UID}:{IMAGE_GID}"
# /dev/shm of a container that runs verify, in GiB: what verify's shm check tells users to give
# (`--shm-size=8g`), for build.py --verify (engine.py), the workflow's runs (--ci-matrix) and Kubernetes.
VERIFY_SHM_GIB = 8


def architecture_of(platform: str) -> str:
    """'linux/arm64' -> 'arm64' (Docker's and Debian's name for it)."""
    return platform.split("/", 1)[1]


def base_for(platform: str, image: str) -> str:
    """The base image of `platform` under the name a user pulls for that architecture alone.

    An engine without a multi-platform image store keeps one image per name, so an arm64 base
    cannot share amd64's name there; Docker Hub's per-architecture repositories (arm64v8/debian)
    are the names users know for it. A base under a registry prefix is taken as given.
    """
    if platform == AMD64 or "/" in image:
        return image
    prefix = {"arm64": "arm64v8"}[architecture_of(platform)]
    return f"{prefix}/{image}"


@dataclass(frozen=True)
class ImageSpec:
    """One image to render and build."""

    build: MatrixEntry
    variant: str
    python: str
    base_image: str
    repository: str = REPOSITORY
    gets_short_alias: bool = False  # the newest patch of its torch minor for its CUDA
    python_is_default: bool = True
    lock_digest: str = ""  # of this image's lock file; "" while it has none
    runtime_lock_digest: str = ""
    runtime_pins: tuple[tuple[str, str], ...] = ()  # (name, version) of every package the runtime lock pins
    lock_pins: tuple[tuple[str, str], ...] = ()  # the same of this image's own lock
    layer_plan: tuple[Layer, ...] = ()  # the runtime's component layers, bottom first (runtime only)
    platform: str = AMD64  # the Docker platform of the image
    builder_image: str = ""  # the builder stage's base: the build machine's own architecture

    @property
    def kind(self) -> Variant:
        """Its row of the variants table: what it builds FROM, which lock, what it adds."""
        return variant_table.of(self.variant)

    @property
    def platform_suffix(self) -> str:
        """'' for linux/amd64 (the tags users have always pulled), '-arm64' for an arm64 image."""
        return "" if self.platform == AMD64 else f"-{architecture_of(self.platform)}"

    @property
    def stem(self) -> str:
        """'2.4.1-cuda12.1', with '-py3.13' when the Python is not the default one."""
        suffix = "" if self.python_is_default else f"-py{self.python}"
        return f"{self.build.torch}-cuda{self.build.cuda}{suffix}"

    @property
    def tag(self) -> str:
        return f"{self.repository}:{self.stem}-{self.variant}{self.platform_suffix}"

    @property
    def aliases(self) -> tuple[str, ...]:
        """Short tags users know ('v2.4-cuda12.1-jupyter'), only on the newest patch of a minor."""
        if not self.gets_short_alias:
            return ()
        short_stem = self.stem.replace(self.build.torch, f"v{self.build.torch_minor}", 1)
        return (f"{self.repository}:{short_stem}-{self.variant}{self.platform_suffix}",)

    @property
    def runtime_tag(self) -> str:
        """The runtime image the jupyter and ssh variants build FROM."""
        return f"{self.repository}:{self.stem}-runtime{self.platform_suffix}"

    @property
    def default_runtime_tag(self) -> str:
        """The FROM written in committed Dockerfiles (a build arg overrides it for registries)."""
        return f"{REPOSITORY}:{self.stem}-runtime"

    @property
    def directory(self) -> Path:
        return IMAGES_DIR / self.stem

    @property
    def dockerfile(self) -> Path:
        return self.directory / self.variant / "Dockerfile"

    @property
    def own_directory(self) -> Path:
        """Where a variant with its own contract keeps it: devel (it adds the CUDA compiler)."""
        return self.directory / self.variant if self.kind.own_contract else self.directory

    @property
    def manifest(self) -> Path:
        return self.own_directory / "manifest.json"

    @property
    def constraints(self) -> Path:
        """The pip constraints (the CUDA torch packages, from the runtime lock) every pip run in the image obeys."""
        return self.own_directory / "constraints.txt"

    @property
    def lock(self) -> Path:
        """The lock pip installs from; ssh adds no Python package, so it carries the runtime's."""
        return self.directory / f"{self.kind.lock_name}.lock"

    @property
    def runtime_lock(self) -> Path:
        """The runtime's lock: every variant installs on top of it, and its bill of materials lists it."""
        return self.directory / "runtime.lock"

    @property
    def rest_lock(self) -> Path:
        """The runtime lock without what the builder's shared pip steps install (rendered): its last step."""
        return self.directory / "runtime-rest.lock"


def image_specs(
    matrix: Matrix,
    builds: list[MatrixEntry],
    variants: tuple[str, ...] = DEFAULT_VARIANTS,
    python: str | None = None,
    base_image: str | None = None,
    registry: str | None = None,
    platform: str = AMD64,
) -> list[ImageSpec]:
    """Expand builds x variants into ImageSpecs, runtime first so variants can build FROM it.

    `platform` other than linux/amd64: every build must have CUDA wheels for it, else UsageError
    naming the lines that do.
    """
    repository = f"{registry.rstrip('/')}/{REPOSITORY}" if registry else REPOSITORY
    ordered = [v for v in VARIANTS if v in variants]
    if platform != AMD64:
        missing = [b for b in builds if platform not in b.platforms]
        if missing:
            raise UsageError(f"{missing[0].short()} has no CUDA wheels for {platform}; lines that have them: "
                             f"{matrix.lines_on(platform)}")
        # A devel image whose compiler comes from NVIDIA's apt repository (CUDA 12 lines) installs
        # from its x86_64 repository; CUDA 13's compiler wheels exist for every platform.
        for build in builds:
            lacking = [v for v in ordered if platform not in variant_table.of(v).platforms(build)]
            if lacking:
                raise UsageError(f"{build.short()} takes its {lacking[0]} compiler from NVIDIA's x86_64 apt repository, "
                                 f"so its {lacking[0]} image is built for linux/amd64 only: drop --variant {lacking[0]}")
    specs = []
    for build in builds:
        py = matrix.python_for(build, python)
        base = matrix.bases[py]
        for variant in ordered:
            spec = ImageSpec(
                build=build.on(platform),
                variant=variant,
                python=py,
                base_image=base_for(platform, base_image or base.image),
                repository=repository,
                gets_short_alias=matrix.is_newest_of_minor(build),
                python_is_default=py == matrix.default_python,
                platform=platform,
                builder_image=base_image or base.image,
            )
            runtime_pins = lockfile.pins(spec.runtime_lock)
            layer_plan = component_layers(matrix.builds, build, runtime_pins) if spec.kind.is_root else ()
            specs.append(replace(spec, lock_digest=lockfile.digest(spec.lock),
                                 runtime_lock_digest=lockfile.digest(spec.runtime_lock),
                                 runtime_pins=tuple(sorted(runtime_pins.items())),
                                 lock_pins=tuple(sorted(lockfile.pins(spec.lock).items())),
                                 layer_plan=layer_plan))
    return specs


def platform_of_tag(ref: str) -> str:
    """The platform a tag of ours names: linux/arm64 for '...-arm64', else linux/amd64."""
    suffix = f"-{architecture_of(ARM64)}"
    return ARM64 if refs.tag_of(ref).endswith(suffix) else AMD64


def committed_manifest(ref: str) -> Path | None:
    """The committed manifest of an image reference of ours ('[registry/]pytorch-cuda:<stem>-<variant>[-arm64]').

    It is linux/amd64's; an arm64 image promises the same but its own archs (Matrix.on)."""
    if refs.repository_name(ref) != REPOSITORY:
        return None
    tag = refs.tag_of(ref)
    if platform_of_tag(ref) != AMD64:
        tag = tag[: -len(architecture_of(platform_of_tag(ref))) - 1]
    for variant in VARIANTS:
        if tag.endswith(f"-{variant}"):
            path = IMAGES_DIR / tag[: -len(variant) - 1] / "manifest.json"
            return path if path.is_file() else None
    return None


def ci_matrix(specs: list[ImageSpec]) -> dict[str, Any]:
    """strategy.matrix for the workflow: one entry per tag, from the same specs every build uses."""
    return {"include": [
        {
            "tag": refs.tag_of(spec.tag), "stem": spec.stem, "variant": spec.variant,
            "torch": spec.build.torch, "cuda": spec.build.cuda, "python": spec.python, "platform": spec.platform,
            # of the published tag: an index where more than one
            "platforms": ",".join(spec.build.platforms),
            "alias": refs.tag_of(spec.aliases[0]) if spec.aliases else "",
            "build_args": f"--torch {spec.build.torch} --cuda {spec.build.cuda} --python {spec.python}"
                          + (f" --platform {spec.platform}" if spec.platform_suffix else ""),
            # every variant of its release on its platform (variants.TABLE), whichever the selection named
            **release_variants(spec.build, spec.platform),
            "shm_size": f"{VERIFY_SHM_GIB}g",  # docker run --shm-size of the jobs that run verify
        }
        for spec in specs
    ]}


def release_variants(build: MatrixEntry, platform: str) -> dict[str, str]:
    """The variants of one release on one platform, as the workflow's steps use them: `variants` for a shell
    loop, `variant_args` for build.py, `tested` for the image tests' loop (pytest --image)."""
    present = variant_table.on_platform(build, platform)
    return {"variants": " ".join(v.name for v in present),
            "variant_args": " ".join(f"--variant {v.name}" for v in present),
            "tested": " ".join(v.name for v in present if v.tested)}
