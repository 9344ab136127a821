"""Inside a check's own process: run the check and write its result where the parent reads it."""
from __future__ import annotations

import faulthandler
import importlib
import json
import logging
import os
import sys
import time
import traceback
from typing import Any, Dict

from verify import faults
from verify.context import CheckContext
from verify.errors import root_cause
from verify.manifest import Manifest
from verify.result import CheckResult, Outcome, Status

log = logging.getLogger(__name__)


def run_check(request: Dict[str, Any]) -> CheckResult:
    """Run the check `request['name']` and return its result; an exception becomes a failure."""
    name = request["name"]
    manifest = Manifest.from_dict(request["manifest"], request["manifest"].get("path", "?")) \
        if request.get("manifest") else None
    fault = faults.fault_for(name)
    context = CheckContext(manifest=manifest, require_gpu=bool(request.get("require_gpu")), fault=fault,
                           timeout_s=float(request.get("timeout_s") or 120.0), backend=request.get("backend"))
    started = time.monotonic()
    try:
        _one_cpu_thread()
        module = importlib.import_module(f"verify.checks.{name}")
        handled = getattr(module, "FAULTS", ())
        if fault in faults.GENERIC and fault not in handled:
            faults.apply_generic(fault)  # does not return
        if fault is not None and fault not in handled and fault not in faults.GENERIC:
            outcome = Outcome(Status.FAIL, f"unknown fault {fault!r} for check {name}")
        else:
            outcome = module.run(context)
    except Exception as err:  # a check must not take the report down with it
        log.debug("check %s raised", name, exc_info=True)
        if isinstance(err, ImportError):
            reason = f"cannot import {err.name or 'a module'} ({type(err).__name__}: {_first_line(err)})"
        else:
            said = f"{type(err).__name__}: {_first_line(err)}"
            reason = f"check raised {said}"
            cause = root_cause(err)
            if not cause.startswith(said):
                reason += f" (root cause: {cause})"  # where it failed, not only what wrapped it
        outcome = Outcome(Status.FAIL, reason, {"traceback": traceback.format_exc(limit=8)})
    if fault:
        outcome.figures["fault_injected"] = fault
        outcome.reason = f"[fault injected: {fault}] {outcome.reason}"
    return CheckResult.from_outcome(name, outcome, time.monotonic() - started)


def _one_cpu_thread() -> None:
    """Checks run side by side and their CPU work is small: with a pool of OpenMP threads each, they
    oversubscribe the cores and spin in barriers (a 1 s CPU training run took 17 s on a busy 2-core
    host). One intra-op thread per check keeps every check's time predictable."""
    try:
        import torch
    except Exception:  # a torch that does not import is the check's to report, with its cause
        return
    torch.set_num_threads(1)


def write_result(result: CheckResult, path: str) -> None:
    """Write atomically: the parent treats a missing file as a crash, never a half-written one."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(result.to_dict(), handle, default=str)
    os.replace(partial, path)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


if __name__ == "__main__":  # a fresh interpreter per check (see forkserver): the request is argv[1]
    faulthandler.enable()
    _request = json.loads(sys.argv[1])
    write_result(run_check(_request), _request["result"])
    # Leave without interpreter teardown: it runs the destructors of process groups and CUDA contexts,
    # which can block (NCCL's abort on an unhealthy communicator), and the result is already written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
