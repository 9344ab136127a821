"""What a check is given: the manifest, the user's flags, its time limit, and a test-only fault."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from verify.manifest import Manifest
from verify.result import Outcome, Status


@dataclass(frozen=True)
class CheckContext:
    manifest: Optional[Manifest] = None
    require_gpu: bool = False
    fault: Optional[str] = None
    timeout_s: float = 120.0  # when the runner kills the check: a check that waits on others ends before it
    backend: Optional[str] = None  # --backend: the process-group backend a distributed check must use

    def no_gpu(self, why: str, figures: Optional[Dict[str, Any]] = None, key_figure: str = "") -> Outcome:
        """The outcome of a check that needed a GPU and found none: skip, or fail under --require-gpu."""
        if self.require_gpu:
            return Outcome(Status.FAIL, f"{why} (--require-gpu: a GPU is required)", dict(figures or {}),
                           key_figure or "no GPU")
        return Outcome(Status.SKIP, why, dict(figures or {}), key_figure or "no GPU")
