"""What became of each image of a build: made by pipeline.py, printed by tables.py.

A module of its own so that the tables (which audit.py prints too) need nothing of the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BuildResult:
    """What became of one image; the summary table prints these."""

    tag: str
    status: str  # built | failed | skipped
    seconds: float = 0.0
    size: int | None = None
    note: str = ""
    aliases: tuple[str, ...] = ()
    verify: str = ""  # "" (not run), "passed", "FAILED (exit N)"

    @property
    def ok(self) -> bool:
        return self.status == "built" and not self.verify.startswith("FAILED")
