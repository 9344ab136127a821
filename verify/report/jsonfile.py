"""The JSON report: a fingerprint of the environment, a summary, and every check with its figures."""
from __future__ import annotations

import json
import math
from typing import Any, Dict

from verify.result import Report, Status

SCHEMA = 1


def plain(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as strings rather than produce invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def to_dict(report: Report) -> Dict[str, Any]:
    data: Dict[str, Any] = plain({
        "schema": SCHEMA,
        "fingerprint": report.fingerprint,
        "summary": {
            "exit_code": report.exit_code,
            "passed": report.count(Status.PASS),
            "warned": report.count(Status.WARN),
            "failed": report.count(Status.FAIL),
            "skipped": report.count(Status.SKIP),
            "failed_checks": report.failed,
            "duration_s": round(report.duration_s, 3),
            "line": report.summary(),
        },
        "checks": [result.to_dict() for result in report.results],
    })
    return data


def render(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, allow_nan=False) + "\n"
