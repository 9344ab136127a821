"""What a user watches while images build: a live line per image, then a summary table."""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def format_size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table, like `docker images` prints."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


@dataclass
class Result:
    tag: str
    status: str  # built | failed | skipped
    seconds: float = 0.0
    size: int | None = None
    note: str = ""
    aliases: tuple[str, ...] = ()
    verify: str = ""


@dataclass
class Progress:
    """Live progress: on a terminal one line redrawn every half second, else one line per step."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    verbose: bool = False
    _label: str = ""
    _step: str = ""
    _started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def live(self) -> bool:
        return self.stream.isatty()

    def start(self, index: int, total: int, tag: str) -> None:
        self._label, self._step, self._started = f"[{index}/{total}] {tag}", "starting", time.monotonic()
        if self.live:
            self._stop.clear()
            self._thread = threading.Thread(target=self._redraw_loop, daemon=True)
            self._thread.start()
        else:
            self._print(f"{self._label}: building")

    def step(self, number: int, total: int, text: str) -> None:
        with self._lock:
            self._step = f"step {number}/{total}: {' '.join(text.split())[:70]}"
        if not self.live:
            self._print(f"{self._label} {format_seconds(self.elapsed())} {self._step}")

    def line(self, text: str) -> None:
        if self.verbose:
            self._clear()
            self._print(f"    {text}")

    def say(self, text: str) -> None:
        self._clear()
        self._print(text)

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def finish(self, outcome: str) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._clear()
        self._print(f"{self._label}: {outcome} in {format_seconds(self.elapsed())}")

    def _redraw_loop(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                text = f"{self._label}  {format_seconds(self.elapsed())}  {self._step}"
            width = 120
            self.stream.write("\r" + text[:width].ljust(width))
            self.stream.flush()

    def _clear(self) -> None:
        if self.live:
            self.stream.write("\r" + " " * 120 + "\r")

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def summary(results: list[Result]) -> str:
    rows = [
        [r.tag, r.status, format_seconds(r.seconds) if r.seconds else "-", format_size(r.size), r.verify or "-", r.note]
        for r in results
    ]
    return table(["TAG", "STATUS", "TIME", "SIZE", "VERIFY", "NOTE"], rows)
