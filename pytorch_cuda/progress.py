"""What a user watches while images build: a live line per image (the tables come after: tables.py).

Imports nothing of the package: the pipeline drives it, and tables.py reads its clock format."""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO


def format_seconds(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"



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
