"""The check runner's server: imports torch once, then forks one process per check.

Importing torch costs seconds, and a fresh interpreter per check would pay it ten times. This
process pays it once (with the modules named on its command line) and forks: each check still gets
its own process (own address space, own process group, killable on timeout), started from a state
where torch is imported but CUDA is not initialised, so the child may still use CUDA.

That last condition is checked, not assumed: some torch releases initialise the CUDA driver while
importing (2.2/2.3's torch._dynamo counts devices at import, which falls back to cuInit when NVML
cannot load or CUDA_VISIBLE_DEVICES holds MIG UUIDs), and a child forked after cuInit gets
"initialization error" from every CUDA call: its GPU checks would skip or run on the CPU without
saying why. So after the preload we ask the driver itself (cuDeviceGetCount answers
CUDA_ERROR_NOT_INITIALIZED until someone called cuInit); if it was initialised, each check is
started as a fresh interpreter (fork, then exec) instead: slower, but right.

Protocol, one JSON object a line. The parent writes requests to our stdin:
  {"id": 1, "name": "cuda", "result": PATH, "log": PATH, "manifest": {...}, "require_gpu": false,
   "timeout_s": 120.0, "backend": null}
We answer on our stdout (kept for this channel alone; stray prints go to stderr):
  {"ready": true, "torch": "2.4.1", "error": null, "mode": "fork", "why": ""}   once, after the import
  {"started": 1, "pid": 4242}                             after each fork
  {"exited": 1, "pid": 4242, "code": 0}                   code < 0: killed by that signal
Stdin closing means the parent is gone: we kill what we started and exit. So does SIGTERM, which
torchrun sends to a worker's whole process group (the parent and us, not the checks' own groups);
and a check dies with us even when we are SIGKILLed (PR_SET_PDEATHSIG), so no check outlives its run.
"""
from __future__ import annotations

import ctypes
import faulthandler
import importlib
import json
import os
import select
import signal
import sys
import threading
import traceback
from typing import Any, Dict, List, Optional, TextIO

CUDA_ERROR_NOT_INITIALIZED = 3
LIBCUDA_ENV = "VERIFY_LIBCUDA"  # which CUDA driver library to ask (default: the system's libcuda.so.1)


def cuda_driver_initialised() -> Optional[bool]:
    """Whether the CUDA driver was initialised (cuInit) in this process; None when there is no driver."""
    try:
        libcuda = ctypes.CDLL(os.environ.get(LIBCUDA_ENV) or "libcuda.so.1")
        count = ctypes.c_int(0)
        return int(libcuda.cuDeviceGetCount(ctypes.byref(count))) != CUDA_ERROR_NOT_INITIALIZED
    except (OSError, AttributeError):
        return None


def _preload(modules: List[str]) -> Dict[str, Any]:
    """Import torch, and what the requested checks would each import again. None starts a thread;
    whether one initialised CUDA decides how checks start (see the module docstring)."""
    try:
        import torch
    except BaseException as err:  # a broken install: every check will report it in detail
        return {"torch": None, "error": f"{type(err).__name__}: {err}", "mode": "fork", "why": ""}
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:
            pass  # the check that needs it imports it again and reports the error
    imported = f"importing torch {torch.__version__}{' and ' + ', '.join(modules) if modules else ''}"
    if cuda_driver_initialised():
        why = (f"{imported} initialised the CUDA driver, so a forked check could not use the GPU: each check runs "
               "in a fresh interpreter")
        return {"torch": torch.__version__, "error": None, "mode": "exec", "why": why}
    threads = python_threads()
    if threads:
        # fork copies only the calling thread: a lock another Python thread held (a logging handler's,
        # the import lock, a compile worker pool's reader) stays locked forever in the child. Native
        # threads a library starts at import are not counted: torch 2.4's CUDA build starts one, and
        # checks forked beside it have passed every run of the suite.
        why = (f"{imported} started {threads} other Python thread(s), and a child forked from a threaded "
               "process can deadlock on a lock one of them held: each check runs in a fresh interpreter")
        return {"torch": torch.__version__, "error": None, "mode": "exec", "why": why}
    return {"torch": torch.__version__, "error": None, "mode": "fork", "why": ""}


def python_threads() -> int:
    """Python threads of this process besides the main one (threading.Thread, and threads of C
    extensions registered with the interpreter)."""
    return threading.active_count() - 1


def _send(channel: TextIO, message: Dict[str, Any]) -> None:
    try:
        channel.write(json.dumps(message) + "\n")
        channel.flush()
    except BrokenPipeError:  # the parent is gone; stdin closing will end the loop
        pass


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this process when the runner dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the runner's SIGTERM handler still covers the usual case
        pass
    if os.getppid() != parent:  # the runner died before prctl took effect
        os._exit(70)


def _child(request: Dict[str, Any], channel_fd: int, parent: int, fresh: bool) -> None:
    """In the forked process: never returns. `fresh`: exec a new interpreter for the check."""
    code = 70
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with_parent(parent)
        os.setpgid(0, 0)  # its own group: a timeout kills the check and whatever it started
        os.close(channel_fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if fresh:  # PR_SET_PDEATHSIG, the process group and the log survive exec
            os.execv(sys.executable, [sys.executable, "-m", "verify.check_process", json.dumps(request)])
        faulthandler.enable()  # a segfault in a library leaves a Python stack in the log
        from verify import check_process

        check_process.write_result(check_process.run_check(request), request["result"])
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def serve() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    running: Dict[int, int] = {}  # pid -> request id

    def terminate(signum: int, frame: Any) -> None:
        for pid in list(running):
            _kill_group(pid)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    channel_fd = os.dup(1)
    channel = os.fdopen(channel_fd, "w")
    os.dup2(2, 1)  # anything printed by accident goes to the log, not the protocol
    ready = _preload(sys.argv[1:])
    fresh = ready["mode"] == "exec"
    _send(channel, {"ready": True, **ready})
    pending = b""
    stdin_open = True
    while stdin_open or running:
        if stdin_open:
            readable, _, _ = select.select([0], [], [], 0.05 if running else None)
        else:
            readable = []
        if readable:
            data = os.read(0, 65536)
            if not data:
                stdin_open = False
                for pid in running:  # the parent is gone: nobody will read these results
                    _kill_group(pid)
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                parent = os.getpid()
                pid = os.fork()
                if pid == 0:
                    _child(request, channel_fd, parent, fresh)
                try:
                    os.setpgid(pid, pid)  # also here, so the group exists before anyone kills it
                except OSError:
                    pass
                running[pid] = request["id"]
                _send(channel, {"started": request["id"], "pid": pid})
        elif not stdin_open:
            select.select([], [], [], 0.05)
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            ident = running.pop(pid, None)
            if ident is not None and stdin_open:
                _send(channel, {"exited": ident, "pid": pid, "code": os.waitstatus_to_exitcode(status)})


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


if __name__ == "__main__":
    serve()
