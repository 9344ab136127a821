"""The tables build.py prints, like `docker images` does: the matrix, a plan, a build's summary."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .progress import format_seconds  # one clock format, live and in the summary

if TYPE_CHECKING:  # type names only: tables are made from data, not from Docker
    from .matrix import Matrix
    from .plan import ImageSpec
    from .results import BuildResult


def format_size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def matrix_table(m: Matrix) -> str:
    """`--list`: the matrix as the runtime images hold it (library versions are the locks' exact ones)."""
    from . import plan, render

    rows = []
    for spec in plan.image_specs(m, m.newest_per_tag(), variants=("runtime",)):
        b, shown = spec.build, render.image_manifest(spec)
        rows.append([
            b.torch, b.cuda, shown.cudnn or "-", shown.nccl or "-", shown.cublas or "-", " ".join(b.pythons),
            b.torchvision or "-", b.torchaudio or "-", b.driver_floor, b.toolkit_driver,
            ",".join(a.replace("sm_", "") for a in (b.archs or [])) or "?", b.index,
        ])
    return table(["TORCH", "CUDA", "CUDNN", "NCCL", "CUBLAS", "PYTHON", "VISION", "AUDIO", "DRIVER FLOOR",
                  "CUDA DRIVER", "ARCHS", "INDEX"], rows)


def plan_table(specs: list[ImageSpec]) -> str:
    """`--dry-run`: what would be built, from what, into which Dockerfile."""
    from .render import repo_path

    rows = [[s.tag, " ".join(s.aliases) or "-", s.build.torch, s.build.cuda, s.build.cudnn, s.build.nccl, s.python,
             s.base_image if s.kind.is_root else s.runtime_tag, repo_path(s.dockerfile)] for s in specs]
    return table(["TAG", "ALIASES", "TORCH", "CUDA", "CUDNN", "NCCL", "PYTHON", "FROM", "DOCKERFILE"], rows)


def summary(results: list[BuildResult]) -> str:
    rows = [[r.tag, r.status, format_seconds(r.seconds) if r.seconds else "-", format_size(r.size), r.verify or "-",
             r.note] for r in results]
    return table(["TAG", "STATUS", "TIME", "SIZE", "VERIFY", "NOTE"], rows)
