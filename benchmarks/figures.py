"""How every benchmark prints its figures: a title line, then one aligned `name  value` row each."""
from __future__ import annotations

from collections.abc import Sequence


def print_figures(title: str, figures: Sequence[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in figures)
    print(title)
    for name, value in figures:
        print(f"  {name.ljust(width)}  {value}")
