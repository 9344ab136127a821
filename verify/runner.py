"""Run checks in child processes under per-check timeouts; the parent's side of `forkserver`.

The parent never imports torch: a torch that crashes on import must become a failed report, not a
dead `verify`. Each check runs in its own process group, so a timeout kills the check together with
the DataLoader workers or NCCL ranks it started, and the report always comes back.
"""
from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from verify import nvsmi
from verify.catalog import CheckSpec
from verify.errors import RunnerError
from verify.manifest import Manifest
from verify.result import CheckResult, Status

log = logging.getLogger(__name__)

PARALLEL = 2  # non-exclusive checks that may run at once
# After SIGKILL a process ends at once, unless it sits in the kernel (uninterruptible sleep, as in a
# hung GPU driver); then it never ends, and the report must not wait for it.
KILL_GRACE_S = 10.0
STARTUP_TIMEOUT_S = 300.0  # the runner's one `import torch`: slow from a cold disk or a network filesystem
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class RunOptions:
    manifest: Optional[Manifest] = None
    require_gpu: bool = False
    timeout_s: Optional[float] = None  # overrides every check's own default
    parallel: int = PARALLEL
    backend: Optional[str] = None  # --backend, for the distributed check

    def timeout_for(self, spec: CheckSpec) -> float:
        return self.timeout_s if self.timeout_s is not None else spec.timeout_s


@dataclass
class _Job:
    ident: int
    spec: CheckSpec
    timeout_s: float
    result_path: str
    log_path: str
    launched_at: float
    pid: Optional[int] = None
    timed_out: bool = False
    killed_at: Optional[float] = None

    @property
    def deadline(self) -> float:
        return self.launched_at + self.timeout_s

    @property
    def next_event(self) -> float:
        """When the scheduler must look at this job again without news: its time limit, then the kill's grace."""
        return self.killed_at + KILL_GRACE_S if self.killed_at is not None else self.deadline


class _ForkServer:
    """The `forkserver` process: a pipe for requests and one for its answers."""

    def __init__(self, workdir: str, preload: Sequence[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self.log_path = os.path.join(workdir, "runner.log")
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "verify.forkserver", *preload],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, env=env,
            )
        self._pending = b""

    def send(self, message: Dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def receive(self, timeout_s: float) -> List[Dict[str, Any]]:
        """The messages that arrive within `timeout_s` (maybe none). EOF means the runner died."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        readable, _, _ = select.select([fd], [], [], max(timeout_s, 0.0))
        if not readable:
            return []
        data = os.read(fd, 65536)
        if not data:
            code = self.proc.wait()
            raise RunnerError(f"the check runner exited ({_describe_exit(code)}): {_log_tail(self.log_path)}")
        self._pending += data
        messages = []
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            messages.append(json.loads(line))
        return messages

    def wait_ready(self, timeout_s: float) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in self.receive(deadline - time.monotonic()):
                if message.get("ready"):
                    return message
        raise RunnerError(f"the check runner did not start within {timeout_s:g} s (stuck importing torch?)")

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            try:
                self.proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:  # stuck in the kernel: leave it, the report is done
                log.info("the check runner did not exit after SIGKILL")


def how_checks_run(parallel: int, smi: nvsmi.SmiReport) -> Tuple[int, str]:
    """(checks at once, why fewer): a GPU in Exclusive_Process compute mode takes one CUDA context at a
    time, so two checks side by side would fail "busy or unavailable"; there they run one by one."""
    if nvsmi.exclusive_process(smi):
        return 1, "a GPU is in Exclusive_Process compute mode (one CUDA context at a time): checks run one by one"
    return parallel, ""


def run(specs: Sequence[CheckSpec], options: RunOptions,
        on_result: Optional[Callable[[CheckResult], None]] = None) -> List[CheckResult]:
    """Run `specs` and return their results in the order given; `on_result` sees each as it ends.

    A "fingerprint" result, when asked for, also carries how the checks were run (figures["runner"]).
    """
    results: Dict[str, CheckResult] = {}
    smi = nvsmi.query()
    parallel, serial_reason = how_checks_run(options.parallel, smi)
    runner_facts: Dict[str, Any] = {"parallel": parallel, "serial_reason": serial_reason, "nvidia_smi": smi.problem}
    if smi.hung:  # the checks still run: each reports what it can, health says why
        log.warning("%s", smi.problem)

    def finish(result: CheckResult) -> None:
        if result.name == "fingerprint":
            result.figures["runner"] = runner_facts
        results[result.name] = result
        if on_result:
            on_result(result)

    workdir = tempfile.mkdtemp(prefix="verify-")
    forkserver: Optional[_ForkServer] = None
    running: Dict[int, _Job] = {}
    try:
        forkserver = _ForkServer(workdir, sorted({module for spec in specs for module in spec.preload}))
        ready = forkserver.wait_ready(STARTUP_TIMEOUT_S)
        if ready.get("error"):
            log.info("torch did not import in the runner: %s", ready["error"])
        runner_facts.update({"check_processes": ready.get("mode", "fork"), "why": ready.get("why", "")})
        _schedule(forkserver, specs, options, parallel, workdir, running, finish)
    except RunnerError as err:
        for job in running.values():
            _kill(job)
        for spec in specs:
            if spec.name not in results:
                finish(CheckResult(spec.name, Status.FAIL, str(err), 0.0))
    finally:
        for job in running.values():
            _kill(job)
        if forkserver is not None:
            forkserver.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return [results[spec.name] for spec in specs]


def _schedule(forkserver: _ForkServer, specs: Sequence[CheckSpec], options: RunOptions, parallel: int, workdir: str,
              running: Dict[int, _Job], finish: Callable[[CheckResult], None]) -> None:
    # Gang checks first (every rank of a distributed run starts them together, so none waits for a
    # neighbour's other checks); then slow checks so the quick ones run beside them; exclusive ones
    # last, one at a time.
    queue = sorted(specs, key=lambda spec: (not spec.gang, spec.exclusive, not spec.slow))
    next_ident = 1
    while queue or running:
        while queue and _may_start(queue[0], running, parallel):
            spec = queue.pop(0)
            job = _Job(next_ident, spec, options.timeout_for(spec),
                       os.path.join(workdir, f"{spec.name}.json"), os.path.join(workdir, f"{spec.name}.log"),
                       time.monotonic())
            next_ident += 1
            forkserver.send({
                "id": job.ident, "name": spec.name, "result": job.result_path, "log": job.log_path,
                "manifest": options.manifest.to_dict() if options.manifest else None,
                "require_gpu": options.require_gpu, "timeout_s": job.timeout_s, "backend": options.backend,
            })
            running[job.ident] = job
        wait = min(job.next_event for job in running.values()) - time.monotonic() if running else 0.0
        for message in forkserver.receive(min(max(wait, 0.0), 0.5)):
            answered = running.get(message.get("started") or message.get("exited") or -1)
            if answered is None:
                continue
            job = answered
            if "started" in message:
                job.pid = int(message["pid"])
            else:
                del running[job.ident]
                _kill(job)  # workers or ranks the check left behind must not skew the next check
                finish(_collect(job, int(message["code"])))
        now = time.monotonic()
        for job in list(running.values()):
            if now >= job.deadline and not job.timed_out and job.pid is not None:
                log.info("%s timed out after %s s; killing process group %s", job.spec.name, job.timeout_s, job.pid)
                job.timed_out = True
                job.killed_at = now
                _kill(job)
            elif job.killed_at is not None and now >= job.killed_at + KILL_GRACE_S:
                del running[job.ident]  # its "exited", if it ever comes, is ignored
                finish(_unkillable(job))


def _may_start(spec: CheckSpec, running: Dict[int, _Job], parallel: int) -> bool:
    if any(job.spec.exclusive for job in running.values()):
        return False
    if spec.exclusive:
        return not running
    return len(running) < max(parallel, 1)


def _unkillable(job: _Job) -> CheckResult:
    return CheckResult(
        job.spec.name, Status.FAIL,
        f"timed out after {job.timeout_s:g} s and did not exit {KILL_GRACE_S:g} s after SIGKILL: its process is stuck "
        "in the kernel (uninterruptible sleep), which points at a hung GPU driver (driver hung? check `dmesg` for "
        "Xid errors; the GPU may need a reset)",
        time.monotonic() - job.launched_at,
        {"timeout_s": job.timeout_s, "pid": job.pid, "log_tail": _log_tail(job.log_path, lines=10)}, "unkillable")


def _collect(job: _Job, code: int) -> CheckResult:
    elapsed = time.monotonic() - job.launched_at
    if os.path.exists(job.result_path):  # complete (written atomically): its verdict stands even if it hung after
        try:
            with open(job.result_path, encoding="utf-8") as handle:
                result = CheckResult.from_dict(json.load(handle))
            result.duration_s = elapsed
        except (OSError, ValueError, KeyError) as err:
            return CheckResult(job.spec.name, Status.FAIL, f"unreadable result: {err}", elapsed)
        if job.timed_out:
            result.figures["killed_after_reporting"] = True
            result.reason += (f" (its process reported, then did not exit before the {job.timeout_s:g} s limit "
                              "and was killed)")
        return result
    if job.timed_out:
        return CheckResult(job.spec.name, Status.FAIL, f"timed out after {job.timeout_s:g} s (killed)", elapsed,
                           {"timeout_s": job.timeout_s, "log_tail": _log_tail(job.log_path, lines=10)}, "timeout")
    return CheckResult(job.spec.name, Status.FAIL,
                       f"the check's process {_describe_exit(code)} before reporting: {_log_tail(job.log_path)}",
                       elapsed, {"exit_code": code, "log_tail": _log_tail(job.log_path, lines=10)}, "crashed")


def _kill(job: _Job) -> None:
    if job.pid is None:
        return
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except OSError:
        pass


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _log_tail(path: str, lines: int = 1) -> str:
    """What a process printed last; for one line, its last message rather than a stack frame."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 16384, 0))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no output)"
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    if lines == 1:
        # Tracebacks and faulthandler dumps indent their frames; the message is not indented.
        messages = [line for line in kept if not line[0].isspace() and not line.startswith("Extension modules")]
        errors = [line for line in messages if "rror" in line or "xception" in line]
        kept = (errors or messages or kept)[-1:]
    else:
        kept = kept[-lines:]
    return "\n".join(kept) if kept else "(no output)"
