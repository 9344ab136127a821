"""Not a check: the environment fingerprint at the top of the JSON report, gathered in a child too."""
from __future__ import annotations

import platform
from typing import Any, Dict, List

import torch

from verify import versions
from verify.checks._common import nccl_version
from verify.checks.driver import DriverQueryError, read_driver_version
from verify.context import CheckContext
from verify.result import Outcome, Status


def _gpus() -> List[Dict[str, Any]]:
    if torch.version.cuda is None or not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                     "memory_gib": round(props.total_memory / 2**30, 1)})
    return gpus


def run(ctx: CheckContext) -> Outcome:
    figures: Dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                               "cuda": torch.version.cuda, "cudnn": None, "nccl": None}
    if torch.version.cuda:
        try:
            figures["cudnn"] = versions.cudnn_version_string(torch.backends.cudnn.version())
        except RuntimeError as err:  # torch refuses a mismatched cuDNN; the environment check explains
            figures["cudnn"] = f"unusable: {str(err).splitlines()[0]}"
        figures["nccl"] = nccl_version()
    try:
        figures["driver"] = read_driver_version()[0]
    except DriverQueryError as err:
        figures["driver"] = f"unreadable: {err}"
    figures["gpus"] = _gpus()
    return Outcome(Status.PASS, "collected", figures)
