"""Rendering: an ImageSpec in, Dockerfile and manifest text out. Pure: no Docker, no network."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from verify import compat
from verify import manifest as contract

from . import layers, lockfile
from .matrix import IMAGES_DIR, REPO_ROOT, Matrix
from .plan import IMAGE_GID, IMAGE_HOME, IMAGE_UID, IMAGE_USER, IMAGE_USER_SPEC, ImageSpec

if TYPE_CHECKING:
    import jinja2

TEMPLATES_DIR = REPO_ROOT / "templates"
# Where the runtime's system stage lists the paths its step removed, for the final stage to remove.
SYSTEM_REMOVED = f"{contract.IMAGE_ETC}/system-removed.list"
# Lays the runtime's venv out as component layers inside the builder stage (a build context file).
STAGE_SCRIPT = REPO_ROOT / "pytorch_cuda" / "stage_venv.py"
# uv for builder stages that lay out another architecture's wheels (python -m pytorch_cuda.lock writes it).
BUILDER_TOOLS_LOCK = REPO_ROOT / "images" / "builder-tools.lock"


@cache
def environment(templates_dir: Path) -> jinja2.Environment:
    """The one Jinja environment for every template (Dockerfiles, Kubernetes): strict and trimmed."""
    import jinja2  # here, not at import: preflight renders manifests only, on GPU hosts that may lack jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails instead of rendering empty
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def repo_path(path: Path) -> str:
    """A repository file as the Dockerfiles and build contexts name it: relative, with slashes."""
    return path.relative_to(REPO_ROOT).as_posix()


def render_dockerfile(spec: ImageSpec, packages: tuple[str, ...] = (), templates_dir: Path = TEMPLATES_DIR,
                      promise: contract.Manifest | None = None, steps: tuple[PipStep, ...] | None = None) -> str:
    """The Dockerfile of one image; `packages` are the variant's extra pip pins (jupyter). `promise` and `steps`:
    its image_manifest and (runtime) pip_steps, when the caller has them already (image_files)."""
    if steps is None:
        steps = pip_steps(spec) if spec.kind.is_root else ()
    template = environment(templates_dir).get_template(spec.kind.template)
    text = template.render(
        spec=spec,
        build=spec.build,
        packages=packages,
        user=IMAGE_USER,
        uid=IMAGE_UID,
        gid=IMAGE_GID,
        home=IMAGE_HOME,
        image_user=IMAGE_USER_SPEC,
        image_etc=contract.IMAGE_ETC,
        system_removed=SYSTEM_REMOVED,
        dockerfile_path=repo_path(spec.dockerfile),
        constraints_path=repo_path(spec.constraints),
        manifest_path=repo_path(spec.manifest),
        lock_path=repo_path(spec.lock),
        sbom_locks=[repo_path(lock) for lock in dict.fromkeys((spec.runtime_lock, spec.lock))],
        labels=labels(spec, promise),
        require_cuda=compat.require_cuda(spec.build.cuda),
        site_packages=site_packages(spec),
        component_layers=spec.layer_plan,
        pip_steps=[(repo_path(step.lock_path), step) for step in steps],
        verify_layer=layers.verify_layer(spec.layer_plan),
        source_date_epoch=layers.SOURCE_DATE_EPOCH,
        stage_script=repo_path(STAGE_SCRIPT),
        builder_tools_lock=repo_path(BUILDER_TOOLS_LOCK),
        **(devel_values(spec) if spec.kind.compiler else {}),
    )
    # Blank runs left by empty blocks are noise in a reviewed file.
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip() or (lines and lines[-1].strip()):
            lines.append(line.rstrip())
    return "\n".join(lines).strip("\n") + "\n"


# The wheels whose headers a CUDA 12 devel image links into CUDA_HOME/include: the libraries torch
# links (CUDA 13's wheels share one tree, CUDA_HOME itself).
WHEEL_INCLUDES = ("cublas", "cusparse", "cusolver", "curand", "cufft", "cuda_nvrtc", "nvtx", "cudnn", "nccl")


def cuda_home(spec: ImageSpec) -> str:
    """Where the devel image's toolkit lives: NVIDIA's apt layout, or the tree CUDA 13's wheels share."""
    if spec.build.devel.get("apt"):
        return f"/usr/local/cuda-{spec.build.cuda}"
    return f"{site_packages(spec)}/nvidia/cu{compat.cuda_major(spec.build.cuda)}"


def site_packages(spec: ImageSpec) -> str:
    return f"/opt/venv/lib/python{spec.python}/site-packages"


def torch_arch_list(archs: tuple[str, ...] | None) -> str:
    """TORCH_CUDA_ARCH_LIST for the image's archs: 'sm_86 sm_100' -> '8.6;10.0'."""
    return ";".join(f"{int(a[3:]) // 10}.{int(a[3:]) % 10}" for a in archs or () if a.startswith("sm_") and a[3:].isdigit())


def devel_values(spec: ImageSpec) -> dict[str, object]:
    devel = spec.build.devel
    return {
        "devel": devel,
        "cuda_home": cuda_home(spec),
        "cuda_major": compat.cuda_major(spec.build.cuda),
        "torch_arch_list": torch_arch_list(spec.build.archs),
        "apt_packages": [f"{name}={version}" for name, version in sorted(devel.get("apt", {}).items())],
        "wheel_includes": [f"{site_packages(spec)}/nvidia/{name}/include" for name in WHEEL_INCLUDES],
    }


def image_manifest(spec: ImageSpec) -> contract.Manifest:
    """What the image promises; `verify` compares the running environment against it.

    Versions come from the runtime lock where it pins them (what the image really installs: CUDA
    13's torch pins `nvidia-cuda-runtime==13.0.96.*`, a specifier), else from the matrix.
    """
    build = spec.build
    locked = dict(spec.runtime_pins)

    def exact(component: str, declared: str | None) -> str | None:
        return lockfile.component_version(locked, component) or declared

    promise: dict[str, Any] = {
        "path": contract.DEFAULT_PATH,
        "tag": spec.stem,
        "torch": build.torch,
        "torchvision": build.torchvision,
        "torchaudio": build.torchaudio,
        "triton": locked.get("triton") or locked.get("pytorch-triton") or build.triton,
        "cuda": build.cuda,
        "cuda_runtime": exact("nvidia-cuda-runtime", build.cuda_runtime),
        "cudnn": exact("nvidia-cudnn", build.cudnn),
        "nccl": exact("nvidia-nccl", build.nccl),
        "cublas": exact("nvidia-cublas", build.cublas),
        "python": spec.python,
        "archs": tuple(build.archs or ()),
        "driver_floor": build.driver_floor,
        "toolkit_driver": build.toolkit_driver,
        "index": build.index_url,
        "user": IMAGE_USER,
        "lock_digest": spec.runtime_lock_digest,
        "packages": {name: version for name, version in locked.items() if lockfile.is_cuda_stack(name)},
    }
    if spec.kind.own_contract:  # devel promises its compiler too, and the CUDA wheels of its own lock
        with_devel = locked | dict(spec.lock_pins)
        promise.update(toolkit=spec.build.devel["toolkit"], lock_digest=spec.lock_digest,
                       packages={n: v for n, v in sorted(with_devel.items()) if lockfile.is_cuda_stack(n)})
    return contract.Manifest(**promise)


def labels(spec: ImageSpec, promise: contract.Manifest | None = None) -> dict[str, str]:
    """The io.pytorch-cuda.* labels: the manifest's values, and this variant's own lock digest."""
    values = contract.to_labels(promise or image_manifest(spec))
    values[contract.LABELS["lock_digest"]] = spec.lock_digest
    values[contract.VARIANT_LABEL] = spec.variant
    return values


def render_manifest(spec: ImageSpec, promise: contract.Manifest | None = None) -> str:
    data = (promise or image_manifest(spec)).to_dict()
    del data["path"]  # where the file lies is the reader's business
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def render_constraints(spec: ImageSpec, promise: contract.Manifest | None = None) -> str:
    """pip constraints: the image's CUDA torch packages at their locked versions.

    Set as PIP_CONSTRAINT in every image, so `pip install` of a package that wants another torch or
    other NVIDIA wheels fails with pip's conflict message instead of replacing what was verified.
    """
    pins = sorted((promise or image_manifest(spec)).packages.items())
    return (f"# The CUDA torch of {spec.stem}, from its runtime lock: pip may not replace these.\n"
            "# To change one anyway: PIP_CONSTRAINT= pip install ... (README: Add your own packages)\n"
            + "".join(f"{name}=={version}\n" for name, version in pins))


# The parts of the runtime locks that close tags share, each named by its content: Docker's layer cache keys
# a COPY on the file's path in the build context as well as its bytes, so tags that pin the same wheels
# must COPY the very same file for the builder's pip step of those wheels to be shared.
NVIDIA_LOCKS_DIR = IMAGES_DIR / "nvidia-locks"
PYTHON_LOCKS_DIR = IMAGES_DIR / "python-locks"
NVIDIA_LOCK_HEADER = (
    "# NVIDIA's wheels of the runtime locks that name this file: the builder stage installs them first, on their\n"
    "# own, so Docker's layer cache shares that step (several GB) between the tags that pin them. Named by its\n"
    "# content; written by `python build.py --render` from those runtime.lock files; do not edit.\n")
PYTHON_LOCK_HEADER = (
    "# triton and the other packages (but pip) of the runtime locks that name this file: the builder stage's\n"
    "# second pip step, after NVIDIA's wheels (images/nvidia-locks/), shared in Docker's layer cache by the\n"
    "# tags that pin them (releases of one torch line). Named by its content; written by\n"
    "# `python build.py --render` from those runtime.lock files; do not edit.\n")
REST_LOCK_HEADER = (
    "# The runtime lock beside this file without what images/nvidia-locks/ and images/python-locks/ hold:\n"
    "# torch, its domain libraries and pip, the builder stage's last pip step. Written by\n"
    "# `python build.py --render` from runtime.lock; do not edit.\n")


@dataclass(frozen=True)
class PipStep:
    """One of the builder's pip steps: the lock it installs and the layers it stages."""

    lock_path: Path  # the repository file its COPY takes: named by its content where tags share it
    lock: str  # that file's text: the runtime lock's entries of the step's packages, unchanged
    dest: str  # where the builder stage puts it
    layers: tuple[layers.Layer, ...]
    partial: bool  # staged with --partial: a later step installs more into the venv


def pip_steps(spec: ImageSpec) -> tuple[PipStep, ...]:
    """The runtime's lock cut into the builder's pip steps (layers.pip_steps), each part in the lock's order.

    Every entry of the lock lands in exactly one part: the last step takes whatever the earlier ones do not.
    """
    locked = lockfile.entries(spec.runtime_lock.read_text()) if spec.runtime_lock.exists() else {}
    nvidia = layers.nvidia_layers(spec.layer_plan)
    steps = layers.pip_steps(spec.layer_plan)
    taken: set[str] = set()
    made = []
    for index, staged in enumerate(steps):
        last = index == len(steps) - 1
        names = {name for layer in staged for name in layer.packages}
        chosen = [entry for name, entry in locked.items() if name not in taken and (last or name in names)]
        taken |= {name for name in locked if name in names}
        if last:
            path, dest, text = spec.rest_lock, "/tmp/requirements.lock", REST_LOCK_HEADER + "".join(chosen)
        elif staged == nvidia:
            path, text = _named_by_content(NVIDIA_LOCKS_DIR, f"cuda{spec.build.cuda}", NVIDIA_LOCK_HEADER, chosen)
            dest = "/tmp/nvidia.lock"
        else:
            path, text = _named_by_content(PYTHON_LOCKS_DIR, f"py{spec.python}", PYTHON_LOCK_HEADER, chosen)
            dest = "/tmp/python.lock"
        made.append(PipStep(path, text, dest, staged, partial=not last))
    return tuple(made)


def _named_by_content(directory: Path, prefix: str, header: str, entries: list[str]) -> tuple[Path, str]:
    """A shared lock part's file and text: named by its text's digest, so tags pinning the same wheels share it."""
    text = header + "".join(entries)
    return directory / f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.lock", text


@dataclass(frozen=True)
class ImageFiles:
    """One image's files besides the repository's own directories (pipeline.CONTEXT_DIRS): those rendered
    here, which `--render` writes and commits, and the committed ones its Dockerfile COPYs as they are."""

    spec: ImageSpec
    rendered: Mapping[Path, str]  # the Dockerfile, manifest, constraints (runtime: its pip steps' locks), by absolute path
    copied: tuple[Path, ...]  # its lock and the runtime's, the builder stage's script and tools lock

    @property
    def dockerfile(self) -> str:
        return self.rendered[self.spec.dockerfile]

    @property
    def dockerfile_path(self) -> str:
        """The Dockerfile's path in the build context."""
        return repo_path(self.spec.dockerfile)

    def context(self) -> dict[str, bytes]:
        """The files of its build context, at the repository paths its Dockerfile COPYs."""
        files = {repo_path(path): text.encode() for path, text in self.rendered.items()}
        return files | {repo_path(path): path.read_bytes() for path in self.copied}


def image_files(spec: ImageSpec, packages: tuple[str, ...] = (), templates_dir: Path = TEMPLATES_DIR) -> ImageFiles:
    """Every generated file of one image, for both `--render` and its build context (its manifest made once)."""
    promise = image_manifest(spec)
    steps = pip_steps(spec) if spec.kind.is_root else ()
    rendered = {spec.dockerfile: render_dockerfile(spec, packages, templates_dir, promise, steps),
                spec.manifest: render_manifest(spec, promise), spec.constraints: render_constraints(spec, promise)}
    rendered |= {step.lock_path: step.lock for step in steps}
    # Every variant's bill of materials carries the runtime lock's hashes too.
    copied = tuple(dict.fromkeys((spec.lock, spec.runtime_lock, STAGE_SCRIPT, BUILDER_TOOLS_LOCK)))
    return ImageFiles(spec, rendered, copied)


def write_rendered(m: Matrix, specs: list[ImageSpec]) -> list[Path]:
    """Write every committed file of `specs` (`build.py --render`); returns the ones that changed."""
    written = []
    for spec in specs:
        for path, text in image_files(spec, m.variant_packages.get(spec.variant, ())).rendered.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                written.append(path)
    return written
