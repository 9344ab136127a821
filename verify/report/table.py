"""The terminal table: one aligned row per check, printable as each check ends."""
from __future__ import annotations

from verify.result import CheckResult

NAME_WIDTH = 11
STATUS_WIDTH = 6
TIME_WIDTH = 7
KEY_WIDTH = 26


def _fit(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def header() -> str:
    return "  ".join(("CHECK".ljust(NAME_WIDTH), "STATUS".ljust(STATUS_WIDTH), "TIME".rjust(TIME_WIDTH),
                      "KEY FIGURE".ljust(KEY_WIDTH), "REASON"))


def row(result: CheckResult) -> str:
    return "  ".join((
        result.name.ljust(NAME_WIDTH),
        result.status.label.ljust(STATUS_WIDTH),
        f"{result.duration_s:.1f}s".rjust(TIME_WIDTH),
        _fit(result.key_figure or "-", KEY_WIDTH).ljust(KEY_WIDTH),
        " ".join(result.reason.split()),
    ))
