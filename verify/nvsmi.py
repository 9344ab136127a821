"""Asking `nvidia-smi` about the driver and GPUs, and reading what it prints. Standard library only.

Used by `build.py --preflight` on the host (no torch there) and by verify's runner, which must know
the GPUs' compute mode before it starts any check. Drivers differ in what they can answer:
`compute_cap` is a query field only from driver 510 on (older ones refuse the whole query), and a
value nvidia-smi cannot tell prints as "[N/A]".
"""
from __future__ import annotations

import csv
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

QUERY_FIELDS = ("driver_version", "name", "compute_cap", "compute_mode")
TIMEOUT_S = 30
EXCLUSIVE_PROCESS = "Exclusive_Process"
_NOT_A_VALUE = {"", "[N/A]", "N/A", "[Not Supported]", "Not Supported", "[Unknown Error]", "Not Found",
                "[Requested functionality has been deprecated]", "Requested functionality has been deprecated"}


@dataclass(frozen=True)
class SmiGpu:
    name: str
    compute_capability: Optional[str]  # "9.0"; None when the driver cannot say (old driver, "[N/A]")
    compute_mode: Optional[str] = None  # Default | Exclusive_Process | Prohibited


@dataclass(frozen=True)
class SmiReport:
    driver: Optional[str]
    gpus: Tuple[SmiGpu, ...]
    problem: str = ""  # why nothing (or less) could be read: nvidia-smi missing, failing, an old driver


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


_Q_LINE = re.compile(r"^(\s*)([^:]+?)\s*:\s*(.*)$")


def parse_q(text: str) -> Dict[str, object]:
    """The facts of a full `nvidia-smi -q` report: driver, CUDA version and each GPU's name, modes.

    Returns {"driver": str|None, "cuda": str|None, "gpus": [{"name", "compute_mode", "mig_mode",
    "bus_id"}]}. Only top-level and per-GPU keys are read; sections nested deeper are skipped.
    """
    facts: Dict[str, object] = {"driver": None, "cuda": None}
    gpus: List[Dict[str, Optional[str]]] = []
    section: Optional[str] = None
    for line in text.splitlines():
        if line.startswith("GPU "):
            gpus.append({"bus_id": line[4:].strip(), "name": None, "compute_mode": None, "mig_mode": None})
            section = None
            continue
        match = _Q_LINE.match(line)
        if not match:
            if line.strip() and not line.startswith(" "):
                section = None
            elif line.strip():
                section = line.strip()
            continue
        indent, key, value = len(match.group(1)), match.group(2).strip(), _value(match.group(3))
        if not gpus:
            if key == "Driver Version":
                facts["driver"] = value
            elif key in ("CUDA Version", "CUDA Driver Version"):
                facts["cuda"] = value
            continue
        gpu = gpus[-1]
        if indent <= 4 and key in ("Product Name", "Compute Mode"):
            gpu["name" if key == "Product Name" else "compute_mode"] = value
        elif key == "Current" and section == "MIG Mode":
            gpu["mig_mode"] = value
    facts["gpus"] = gpus
    return facts


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def query(which: Callable[[str], Optional[str]] = shutil.which, run: Runner = subprocess.run) -> SmiReport:
    """The driver and GPUs as nvidia-smi reports them, or what stopped it, in words."""
    smi = which("nvidia-smi")
    if smi is None:
        return SmiReport(None, (), "nvidia-smi not found")
    fields: Sequence[str] = QUERY_FIELDS
    problem = ""
    for attempt in range(2):
        try:
            done = run([smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                       capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return SmiReport(None, (), f"nvidia-smi did not answer within {TIMEOUT_S} s: the driver may be hung "
                                       "(check `dmesg` for Xid errors)")
        except OSError as err:
            return SmiReport(None, (), f"nvidia-smi failed: {err}")
        output = (done.stdout or "") + (done.stderr or "")
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


def exclusive_process(report: SmiReport) -> bool:
    """Whether a GPU is in Exclusive_Process mode: one CUDA context at a time (common on HPC)."""
    return any(gpu.compute_mode == EXCLUSIVE_PROCESS for gpu in report.gpus)
