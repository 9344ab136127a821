"""Rendering: an ImageSpec in, Dockerfile and manifest text out. Pure: no Docker, no network."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jinja2

from .matrix import REPO_ROOT
from .plan import IMAGE_UID, IMAGE_USER, ImageSpec

TEMPLATES_DIR = REPO_ROOT / "templates"


@lru_cache(maxsize=None)
def _environment(templates_dir: Path) -> jinja2.Environment:
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


def render_dockerfile(spec: ImageSpec, packages: tuple[str, ...] = (), templates_dir: Path = TEMPLATES_DIR) -> str:
    """The Dockerfile of one image; `packages` are the variant's extra pip pins (jupyter)."""
    template = _environment(templates_dir).get_template(f"{spec.variant}.Dockerfile.j2")
    text = template.render(
        spec=spec,
        build=spec.build,
        packages=packages,
        user=IMAGE_USER,
        uid=IMAGE_UID,
        dockerfile_path=repo_path(spec.dockerfile),
        manifest_path=repo_path(spec.manifest),
        lock_path=repo_path(spec.lock),
    )
    # Blank runs left by empty blocks are noise in a reviewed file.
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip() or (lines and lines[-1].strip()):
            lines.append(line.rstrip())
    return "\n".join(lines).strip("\n") + "\n"


def manifest(spec: ImageSpec) -> dict:
    """What the image promises; `verify` compares the running environment against it."""
    build = spec.build
    return {
        "tag": spec.stem,
        "torch": build.torch,
        "torchvision": build.torchvision,
        "torchaudio": build.torchaudio,
        "triton": build.triton,
        "cuda": build.cuda,
        "cuda_runtime": build.cuda_runtime,
        "cudnn": build.cudnn,
        "nccl": build.nccl,
        "cublas": build.cublas,
        "python": spec.python,
        "archs": list(build.archs or []),
        "min_driver": build.min_driver,
        "index": build.index_url,
        "lock_digest": spec.runtime_lock_digest,
        "user": IMAGE_USER,
    }


def render_manifest(spec: ImageSpec) -> str:
    return json.dumps(manifest(spec), indent=2, sort_keys=True) + "\n"


def rendered_files(spec: ImageSpec, packages: tuple[str, ...] = ()) -> dict[Path, str]:
    """Every committed file one spec owns, keyed by absolute path."""
    return {spec.dockerfile: render_dockerfile(spec, packages), spec.manifest: render_manifest(spec)}
