"""The image variants as data: what each builds FROM, which lock it installs, what it adds and promises.

The one table every module reads (plan, render, lock, pipeline, the CLI and the CI matrix), instead of
`variant == "..."` tests in each: a new variant is a row here, its template, its packages in
images/variants.json and its lock.
"""
from __future__ import annotations

from dataclasses import dataclass

from .matrix import AMD64, MatrixEntry


@dataclass(frozen=True)
class Variant:
    name: str
    adds: str  # in words, for --help and the README
    template: str  # under templates/
    parent: str | None  # the variant it builds FROM; None: the base image (it installs the CUDA torch itself)
    own_lock: bool  # pip installs its own <name>.lock; else its parent's (it adds no Python package)
    own_contract: bool = False  # its own manifest and constraints, under its directory (it promises more)
    compiler: bool = False  # adds the CUDA compiler: on the platforms of the compiler's source only
    default: bool = True  # built by `build.py --cuda X` without --variant
    tested: bool = True  # the suite's image tests cover it (pytest --image, as the CI's build job runs them)

    @property
    def is_root(self) -> bool:
        """Built FROM the base image: its pip installs from the build's CUDA index, and it has the layer plan."""
        return self.parent is None

    @property
    def lock_name(self) -> str:
        """The stem of the lock pip installs from ('runtime' for a variant that adds no Python package)."""
        return self.name if self.own_lock or self.parent is None else self.parent

    def platforms(self, build: MatrixEntry) -> tuple[str, ...]:
        """The platforms this variant of `build` is built for: every platform of its wheels, except a compiler
        from NVIDIA's apt repository (CUDA 12 lines), which is x86_64's only. More than one: a multi-platform index."""
        if self.compiler and build.devel.get("apt"):
            return (AMD64,)
        return build.platforms


TABLE: tuple[Variant, ...] = (
    Variant("runtime", "the CUDA torch, torchvision, torchaudio and verify", "runtime.Dockerfile.j2",
            parent=None, own_lock=True),
    Variant("jupyter", "JupyterLab", "jupyter.Dockerfile.j2", parent="runtime", own_lock=True),
    Variant("ssh", "an SSH server", "ssh.Dockerfile.j2", parent="runtime", own_lock=False),
    Variant("devel", "the CUDA compiler and headers, ninja", "devel.Dockerfile.j2", parent="runtime",
            own_lock=True, own_contract=True, compiler=True, default=False, tested=False),
)
BY_NAME = {variant.name: variant for variant in TABLE}
NAMES = tuple(variant.name for variant in TABLE)  # parents first: the order images are built in
DEFAULT = tuple(variant.name for variant in TABLE if variant.default)
LOCKED = tuple(variant.name for variant in TABLE if variant.own_lock)  # `python -m pytorch_cuda.lock` writes these
ROOT = next(variant for variant in TABLE if variant.is_root)


def of(name: str) -> Variant:
    return BY_NAME[name]


def on_platform(build: MatrixEntry, platform: str) -> tuple[Variant, ...]:
    """Every variant `build` has an image of on `platform`, parents first."""
    return tuple(variant for variant in TABLE if platform in variant.platforms(build))
