"""The result model every check, the runner and the report writers share."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple


class Status(str, enum.Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"

    @property
    def label(self) -> str:
        return self.value.upper()


@dataclass
class Outcome:
    """What a check says about itself; the runner adds its name and how long it took."""

    status: Status
    reason: str
    figures: Dict[str, Any] = field(default_factory=dict)
    key_figure: str = ""


@dataclass
class CheckResult:
    name: str
    status: Status
    reason: str
    duration_s: float
    figures: Dict[str, Any] = field(default_factory=dict)
    key_figure: str = ""

    @classmethod
    def from_outcome(cls, name: str, outcome: Outcome, duration_s: float) -> CheckResult:
        return cls(name, outcome.status, outcome.reason, duration_s, outcome.figures, outcome.key_figure)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "reason": self.reason,
            "duration_s": round(self.duration_s, 3),
            "key_figure": self.key_figure,
            "figures": self.figures,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> CheckResult:
        return cls(
            name=str(data["name"]),
            status=Status(data["status"]),
            reason=str(data["reason"]),
            duration_s=float(data.get("duration_s", 0.0)),
            figures=dict(data.get("figures") or {}),
            key_figure=str(data.get("key_figure") or ""),
        )


class Findings:
    """Collects what one check found; the worst finding decides the check's status.

    A check records every problem it meets instead of stopping at the first, so one run tells the
    user everything that is wrong.
    """

    def __init__(self) -> None:
        self.figures: Dict[str, Any] = {}
        self.key_figure = ""
        self._problems: List[Tuple[Status, str]] = []

    def fail(self, message: str) -> None:
        self._problems.append((Status.FAIL, message))

    def warn(self, message: str) -> None:
        self._problems.append((Status.WARN, message))

    @property
    def failed(self) -> bool:
        return any(status is Status.FAIL for status, _ in self._problems)

    def outcome(self, ok_reason: str, ok_status: Status = Status.PASS) -> Outcome:
        """The check's outcome: failures first, then warnings, else `ok_status` with `ok_reason`."""
        for status in (Status.FAIL, Status.WARN):
            messages = [message for found, message in self._problems if found is status]
            if messages:
                return Outcome(status, "; ".join(messages), self.figures, self.key_figure)
        return Outcome(ok_status, ok_reason, self.figures, self.key_figure)


@dataclass
class Report:
    """One run: the fingerprint of the environment and every check's result, in report order."""

    results: List[CheckResult]
    fingerprint: Dict[str, Any]
    duration_s: float

    def count(self, status: Status) -> int:
        return sum(1 for result in self.results if result.status is status)

    @property
    def failed(self) -> List[str]:
        return [result.name for result in self.results if result.status is Status.FAIL]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(status)} {word}" for status, word in (
            (Status.PASS, "passed"), (Status.WARN, "warned"), (Status.FAIL, "failed"), (Status.SKIP, "skipped")))
        cuda = next((result for result in self.results if result.name == "cuda"), None)
        if self.failed:
            verdict = "NOT fit to train: see " + ", ".join(self.failed)
        elif cuda is None:
            verdict = "no failures"
        elif cuda.status is Status.SKIP:
            verdict = "no failures, but no GPU was tested"
        else:
            verdict = "fit to train on the GPU"
        return f"verify: {counts} in {self.duration_s:.1f} s - {verdict}"
