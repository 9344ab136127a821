"""compile: torch.compile (Inductor) builds a small model and matches eager, as the user running verify.

Inductor writes C++ (CPU) or Triton (GPU) code and compiles it at run time, so it needs a C/C++
compiler and Python's headers, and a writable cache directory: an image that lacks them imports
torch fine and fails only at the first torch.compile.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import sysconfig
import tempfile
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

from verify import compat
from verify.checks._common import compare, gpu_unusable_reason, on_the_cpu_because
from verify.context import CheckContext
from verify.errors import root_cause
from verify.result import Findings, Outcome

# Inductor fuses and reorders fp32 reductions (LayerNorm, the matmuls' sums): ~1e-6 relative is
# normal. On the GPU, Triton kernels and cuBLAS also pick other orders: allow 1e-3 there. A
# miscompile shows as O(1) errors.
TOLERANCE = {"cpu": 1e-4, "cuda": 1e-3}


def missing_toolchain(device: str, which: Callable[[str], Optional[str]] = shutil.which,
                      exists: Callable[[str], bool] = os.path.exists,
                      environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """What torch.compile will miss on `device`, in words naming the fix."""
    environ = os.environ if environ is None else environ
    problems = []
    if device == "cuda":
        compilers = [environ.get("CC")] if environ.get("CC") else ["cc", "gcc", "clang"]
        if not any(which(name) for name in compilers if name):
            problems.append("no C compiler (cc/gcc) on PATH, which Triton needs: install gcc "
                            "(apt-get install gcc) or set CC")
    else:
        compilers = [environ.get("CXX")] if environ.get("CXX") else ["g++", "c++", "clang++"]
        if not any(which(name) for name in compilers if name):
            problems.append("no C++ compiler (g++/c++) on PATH, which Inductor needs for CPU code: install g++ "
                            "(apt-get install g++) or set CXX")
    include = sysconfig.get_paths().get("include") or ""
    if not exists(os.path.join(include, "Python.h")):
        problems.append(f"Python.h not found in {include or 'the interpreter include dir'}: install the Python "
                        "development headers (e.g. apt-get install python3-dev)")
    return problems


def compiler_crash(error_text: str) -> Optional[str]:
    """Words for a C++ compiler that crashed on Inductor's code (a compiler bug, not the model), or None.

    Seen: bookworm's g++ 12 crashes on torch's 256-bit SVE vector code, which Inductor picks on arm64
    CPUs whose SVE is wider than 128 bits (and under QEMU's default arm64 CPU); Grace's 128-bit SVE2
    compiles. ATEN_CPU_CAPABILITY=default makes Inductor write plain C++ instead.
    """
    crash = next((line[line.index("internal compiler error"):].strip() for line in error_text.splitlines()
                  if "internal compiler error" in line), None)
    if crash is None:
        return None
    vector_code = re.findall(r"-D ?CPU_CAPABILITY_(\w+)", error_text)  # Inductor's -D flags, narrowest last
    target = f"Inductor's {vector_code[-1]} vector code" if vector_code else "Inductor's code"
    return (f"the C++ compiler crashed ({crash}) on {target}: a compiler bug, not the model; "
            "ATEN_CPU_CAPABILITY=default makes Inductor write plain C++ that it compiles")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def noexec_mount(path: str, mountinfo: str) -> Optional[str]:
    """The mount point that holds `path` when it is mounted noexec, else None (from /proc/self/mountinfo)."""
    best: Optional[Tuple[str, bool]] = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        point = _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):  # later mounts over the same point win
            best = (point, "noexec" in fields[5].split(","))
    return best[0] if best and best[1] else None


def existing_parent(path: str) -> str:
    """`path`, or its nearest parent that exists (a cache directory is made on first use), resolved."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return os.path.realpath(path)


def cache_dirs(device: str, environ: Mapping[str, str], temp_dir: str) -> Dict[str, str]:
    """Where torch.compile writes the code it then loads: Inductor's cache, and Triton's on the GPU."""
    dirs = {"TORCHINDUCTOR_CACHE_DIR": environ.get("TORCHINDUCTOR_CACHE_DIR") or temp_dir}
    if device == "cuda":
        home = environ.get("HOME") or os.path.expanduser("~")
        dirs["TRITON_CACHE_DIR"] = environ.get("TRITON_CACHE_DIR") or os.path.join(home, ".triton", "cache")
    return dirs


def noexec_problems(dirs: Mapping[str, str], mountinfo: str) -> List[str]:
    """Each cache directory on a noexec mount, in words naming the variable that moves it."""
    problems = []
    for variable, directory in dirs.items():
        point = noexec_mount(existing_parent(directory), mountinfo)
        if point:
            problems.append(f"its cache {directory} ({variable}) lies on {point}, mounted noexec, so the code "
                            f"compiled there cannot be loaded: set {variable} to a directory that allows exec "
                            "(e.g. docker run --tmpfs /tmp:exec)")
    return problems


def named_cause(cause: str, uid: int) -> str:
    """The root cause, with the fix where it is a known one."""
    if "getpwuid()" in cause:
        return (f"uid {uid} has no user name (no passwd entry, USER unset), which Inductor asks for: "
                f"set USER, or TORCHINDUCTOR_CACHE_DIR ({cause})")
    return cause


def _user() -> Dict[str, object]:
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # `docker run -u 1234` with no passwd entry
        name = None
    return {"user": name, "uid": uid, "root": uid == 0}


class _Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(64, 128)
        self.norm = torch.nn.LayerNorm(128)
        self.last = torch.nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.norm(torch.nn.functional.gelu(self.first(x))))


def choose_device(gpu_missing: Optional[str], capability: Optional[Tuple[int, int]]) -> Tuple[str, str]:
    """(device to compile for, why not the GPU): Triton, Inductor's GPU back end, needs 7.0 or newer."""
    if gpu_missing:
        return "cpu", ""
    if capability is not None and not compat.triton_supported(capability):
        sm = f"sm_{capability[0]}{capability[1]}"
        return "cpu", (f"GPU 0 is {sm}, older than Triton supports (compute capability 7.0): torch.compile fails on "
                       "this GPU ('too old to be supported by the triton GPU compiler') while eager mode works; "
                       "compiled for the CPU instead (use torch.compile(backend='eager' or 'aot_eager') on this GPU)")
    return "cuda", ""


def run(ctx: CheckContext) -> Outcome:
    found = Findings()
    missing = gpu_unusable_reason()
    device, not_gpu = choose_device(missing, None if missing else torch.cuda.get_device_capability(0))
    if not_gpu:
        found.warn(not_gpu)
    user = _user()
    problems = missing_toolchain(device)
    dirs = cache_dirs(device, os.environ, tempfile.gettempdir())
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            problems += noexec_problems(dirs, handle.read())
    except OSError:  # not Linux: nothing to say about mounts
        pass
    found.figures.update(user)
    found.figures.update({"device": device, "backend": "inductor", "toolchain_problems": problems,
                          "image_user": ctx.manifest.user if ctx.manifest else None,
                          "gpu_too_old_for_triton": bool(not_gpu),
                          "cache_dirs": dirs})
    who = user["user"] or f"uid {user['uid']}"
    found.key_figure = f"inductor/{'triton' if device == 'cuda' else 'c++'} as {who}"

    torch.manual_seed(0)
    model = _Small().to(device).eval()
    x = torch.randn(32, 64, device=device)
    try:
        with torch.no_grad():
            eager = model(x)
            started = time.perf_counter()
            compiled = torch.compile(model)(x)
            found.figures["compile_s"] = round(time.perf_counter() - started, 2)
    except Exception as err:
        named = "; ".join(problems) + "; " if problems else ""
        cause = compiler_crash(str(err)) or named_cause(root_cause(err), os.geteuid())
        # The cause ends the reason (a long one is cut in its middle, not at its end).
        reason = f"torch.compile failed as {who}: {named}{cause}"
        found.fail(reason if len(reason) <= 600 else reason[:300] + " ... " + reason[-295:])
        return found.outcome("")
    ok, error = compare(compiled, eager, TOLERANCE[device])
    found.figures["max_rel_error"] = error
    if not ok:
        found.fail(f"compiled output differs from eager by {error:.2e} (tolerance {TOLERANCE[device]:g}): "
                   "Inductor produced wrong code")
    for problem in problems:  # it compiled anyway (cached?), but a cold cache would not
        found.warn(problem)
    path = "Triton on the GPU" if device == "cuda" else "C++ on the CPU"
    return found.outcome(f"torch.compile ({path}) matches eager (error {error:.1e}), as {who} "
                         f"({'root' if user['root'] else 'not root'})"
                         + on_the_cpu_because(missing))
