"""Asking `nvidia-smi` about the driver and GPUs, and reading what it prints. Standard library only.

Used by `build.py --preflight` on the host (no torch there), by verify's runner, which must know the
GPUs' compute mode before it starts any check, and by the `health` check (`nvidia-smi -q`). Drivers
differ in what they can answer: `compute_cap` is a query field only from driver 510 on (older ones
refuse the whole query), and a value nvidia-smi cannot tell prints as "[N/A]".

Every call is bounded (`run_smi`). A GPU that fell off the bus (Xid 79) or a wedged driver leaves
nvidia-smi in uninterruptible sleep inside the kernel: SIGKILL stays pending until the call returns,
which may be never, so `subprocess.run(timeout=...)` (kill, then wait without limit) would hang with
it. Here the process is killed, given a few seconds, then abandoned, and the caller is told in words.
"""
from __future__ import annotations

import csv
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

QUERY_FIELDS = ("driver_version", "name", "compute_cap", "compute_mode")
TIMEOUT_S = 30.0
KILL_GRACE_S = 5.0  # after SIGKILL: a process that is not stuck in the kernel is gone in milliseconds
EXCLUSIVE_PROCESS = "Exclusive_Process"
_NOT_A_VALUE = {"", "[N/A]", "N/A", "[Not Supported]", "Not Supported", "[Unknown Error]", "Not Found",
                "[Requested functionality has been deprecated]", "Requested functionality has been deprecated"}


class SmiHung(Exception):
    """nvidia-smi did not answer in time. It was killed; `abandoned` when even SIGKILL did not end it."""

    def __init__(self, timeout_s: float, abandoned: bool = False, pid: Optional[int] = None) -> None:
        self.timeout_s = timeout_s
        self.abandoned = abandoned
        self.pid = pid
        fate = (f"killed, and still not gone {KILL_GRACE_S:g} s later (process {pid} is stuck in the kernel)"
                if abandoned else "killed")
        super().__init__(f"nvidia-smi did not answer within {timeout_s:g} s (driver hung?): {fate}; check "
                         "`dmesg` for Xid errors (79: the GPU has fallen off the bus); a reset or reboot may be needed")


@dataclass(frozen=True)
class SmiAnswer:
    returncode: int
    stdout: str
    stderr: str


def run_smi(command: Sequence[str], timeout_s: float = TIMEOUT_S) -> SmiAnswer:
    """Run nvidia-smi (`command`, its path first) and return what it printed, within `timeout_s`.

    Raises SmiHung when it does not answer in time (killed, then abandoned after KILL_GRACE_S if
    SIGKILL cannot end it), OSError when it cannot be started.
    """
    proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(timeout=KILL_GRACE_S)  # wait, not communicate: a stuck child's pipes never close
        except subprocess.TimeoutExpired:
            _close_pipes(proc)
            raise SmiHung(timeout_s, abandoned=True, pid=proc.pid) from None
        _close_pipes(proc)
        raise SmiHung(timeout_s) from None
    return SmiAnswer(proc.returncode, stdout or "", stderr or "")


def _close_pipes(proc: subprocess.Popen[str]) -> None:
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass


@dataclass(frozen=True)
class SmiGpu:
    name: str
    compute_capability: Optional[str]  # "9.0"; None when the driver cannot say (old driver, "[N/A]")
    compute_mode: Optional[str] = None  # Default | Exclusive_Process | Prohibited


@dataclass(frozen=True)
class SmiReport:
    driver: Optional[str]
    gpus: Tuple[SmiGpu, ...]
    problem: str = ""  # why nothing (or less) could be read: nvidia-smi missing, failing, hung, an old driver
    hung: bool = False  # nvidia-smi did not answer in time: a GPU may be there, its driver is what does not respond


def _value(text: Optional[str]) -> Optional[str]:
    text = (text or "").strip()
    return None if text in _NOT_A_VALUE else text


def read_rows(text: str, fields: Optional[Sequence[str]] = None) -> List[Dict[str, Optional[str]]]:
    """Rows of `--query-gpu` CSV as {field: value}; values nvidia-smi cannot tell are None.

    With `fields`, the output has no header (`--format=csv,noheader`); without, the first row names
    the fields (`--format=csv`, units such as "memory.total [MiB]" dropped from the names).
    """
    rows = list(csv.reader((line for line in text.splitlines() if line.strip()), skipinitialspace=True))
    if fields is None:
        if not rows:
            return []
        fields, rows = [re.sub(r"\s*\[[^\]]*\]$", "", cell.strip()) for cell in rows[0]], rows[1:]
    else:  # a header anyway (`--format=csv`): not a GPU
        rows = [row for row in rows if [cell.strip() for cell in row[:len(fields)]] != list(fields)]
    return [dict(zip(fields, (_value(cell) for cell in row))) for row in rows if len(row) >= len(fields)]


def parse_query(text: str, fields: Optional[Sequence[str]] = QUERY_FIELDS) -> Tuple[Optional[str], Tuple[SmiGpu, ...]]:
    """The driver and GPUs in `--query-gpu` CSV (`fields=None`: the output has a header row)."""
    driver, gpus = None, []
    for row in read_rows(text, fields):
        driver = row.get("driver_version") or driver
        gpus.append(SmiGpu(name=row.get("name") or "?", compute_capability=row.get("compute_cap"),
                           compute_mode=row.get("compute_mode")))
    return driver, tuple(gpus)


# --- `nvidia-smi -q`: "Key   : value" lines, sections by indentation (4 spaces a level) ---

Section = Dict[str, Any]  # a key's value (str, or None where nvidia-smi cannot tell), or a nested Section
_Q_FIELD = re.compile(r"^(\s*)(\S.*?)\s+:\s?(.*)$")  # nvidia-smi pads every key before its " : "
_Q_GPU = re.compile(r"^GPU ([0-9A-Fa-f]+:[0-9A-Fa-f]+:[0-9A-Fa-f]+\.[0-9A-Fa-f]+)\s*$")


def parse_q(text: str) -> Dict[str, Any]:
    """A full `nvidia-smi -q` report: the top-level facts, and each GPU's fields as nested sections.

    Returns {"driver", "cuda", "attached" (int: GPUs on the host, also under `-i`), "fields" (top
    level), "gpus": [{"bus_id", "name", "compute_mode", "mig_mode", "fields": Section}]}. A value
    nvidia-smi cannot tell ("N/A", "Not Found", ...) is None. Lines indented under a field that has a
    value ("HW Thermal Slowdown" under "HW Slowdown : Active") belong to the section that field is in;
    a section title met twice in one place ("MIG Device") gets " #2", " #3"... appended.
    """
    top: Section = {}
    gpus: List[Dict[str, Any]] = []
    stack: List[Tuple[int, Section]] = [(-1, top)]  # (indent of the section's title, the section)
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("==="):
            continue
        indent = len(line) - len(line.lstrip())
        gpu_title = _Q_GPU.match(line)
        if gpu_title:
            fields: Section = {}
            gpus.append({"bus_id": gpu_title.group(1), "fields": fields})
            stack = [(-1, top), (0, fields)]
            continue
        while len(stack) > 1 and stack[-1][0] >= indent:
            stack.pop()
        section = stack[-1][1]
        field = _Q_FIELD.match(line)
        if field:
            section[field.group(2)] = _value(field.group(3))
            continue
        title = line.strip()
        if title in section:
            count = 2
            while f"{title} #{count}" in section:
                count += 1
            title = f"{title} #{count}"
        child: Section = {}
        section[title] = child
        stack.append((indent, child))
    attached = top.get("Attached GPUs")
    facts: Dict[str, Any] = {
        "driver": top.get("Driver Version"),
        "cuda": top.get("CUDA Version") or top.get("CUDA Driver Version"),
        "attached": int(attached) if isinstance(attached, str) and attached.isdigit() else None,
        "fields": top,
        "gpus": gpus,
    }
    for gpu in gpus:
        gpu["name"] = field_value(gpu["fields"], "Product Name")
        gpu["compute_mode"] = field_value(gpu["fields"], "Compute Mode")
        gpu["mig_mode"] = field_value(gpu["fields"], "MIG Mode", "Current")
    return facts


def section_of(fields: Section, *names: str) -> Section:
    """The first of `names` that is a section in `fields` ({} when none is: older drivers, "N/A")."""
    for name in names:
        found = fields.get(name)
        if isinstance(found, dict):
            return found
    return {}


def field_value(fields: Section, *path: str) -> Optional[str]:
    """The value at `path` (section names, then the field), or None when absent or not told."""
    for name in path[:-1]:
        fields = section_of(fields, name)
    found = fields.get(path[-1]) if path else None
    return found if isinstance(found, str) else None


Runner = Callable[[Sequence[str], float], SmiAnswer]


def query(which: Callable[[str], Optional[str]] = shutil.which, run: Runner = run_smi,
          timeout_s: Optional[float] = None) -> SmiReport:
    """The driver and GPUs as nvidia-smi reports them, or what stopped it, in words."""
    smi = which("nvidia-smi")
    if smi is None:
        return SmiReport(None, (), "nvidia-smi not found")
    fields: Sequence[str] = QUERY_FIELDS
    problem = ""
    for attempt in range(2):
        try:
            done = run([smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                       TIMEOUT_S if timeout_s is None else timeout_s)
        except SmiHung as err:
            return SmiReport(None, (), str(err), hung=True)
        except OSError as err:
            return SmiReport(None, (), f"nvidia-smi failed: {err}")
        output = done.stdout + done.stderr
        if done.returncode == 0:
            driver, gpus = parse_query(done.stdout, fields)
            return SmiReport(driver, gpus, problem)
        if attempt == 0 and "compute_cap" in output and "not a valid field" in output:
            # Drivers before 510 know no compute_cap field: ask again without it.
            fields = tuple(f for f in QUERY_FIELDS if f != "compute_cap")
            problem = "this driver is too old to report compute capabilities (the compute_cap field needs >= 510)"
            continue
        lines = output.strip().splitlines()
        return SmiReport(None, (), f"nvidia-smi: {lines[0] if lines else 'exit ' + str(done.returncode)}")
    return SmiReport(None, (), problem)  # pragma: no cover - the loop always returns


def gpus_in_q(which: Callable[[str], Optional[str]] = shutil.which) -> List[Dict[str, Any]]:
    """This host's GPUs as `nvidia-smi -q` describes them (parse_q's "gpus"), time-limited; none when it
    cannot tell (no nvidia-smi, a failure, a hang): for a message that only helps when it can be read."""
    smi = which("nvidia-smi")
    if smi is None:
        return []
    try:
        answer = run_smi([smi, "-q"])
    except (SmiHung, OSError):
        return []
    return list(parse_q(answer.stdout)["gpus"]) if answer.returncode == 0 else []


def exclusive_process(report: SmiReport) -> bool:
    """Whether a GPU is in Exclusive_Process mode: one CUDA context at a time (common on HPC)."""
    return any(gpu.compute_mode == EXCLUSIVE_PROCESS for gpu in report.gpus)
