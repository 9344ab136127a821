"""health: each GPU's memory, PCIe link, clocks and driver state as `nvidia-smi -q` reports them.

What DCGM's level-1 diagnostic (`dcgmi diag -r 1`, its "software" deployment checks) looks at before a
job, read from nvidia-smi alone: no CUDA context is made, so a GPU torch cannot use is still described,
and a hung driver costs a bounded wait (verify/nvsmi.py), not the run. Each rule's verdict and its
source are in the comments below. A field this GPU or driver does not report (older drivers, MIG,
vGPU, "N/A") is no finding: only what nvidia-smi states is judged.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from verify import nvsmi
from verify.context import CheckContext
from verify.result import Outcome, Status

SMI_TIMEOUT_S = 40.0  # a full -q reads every field of every GPU: seconds per GPU without persistence mode
# DCGM's level-1 limit on retired pages (single + double bit) per GPU: DCGM_LIMIT_MAX_RETIRED_PAGES, 60,
# raised to 63 "to match the field diag" (NVIDIA's field diagnostic, which decides a replacement).
RETIRED_PAGES_LIMIT = 63
# The clocks event reasons that mean the hardware (or the driver, for heat) is holding the clocks down.
# "SW Power Cap" (the power limit reached under load) and "Idle" are normal and not judged.
SLOWDOWN_REASONS = ("HW Slowdown", "HW Thermal Slowdown", "HW Power Brake Slowdown", "SW Thermal Slowdown")
_Found = Tuple[Status, str, str]  # (status, rule, message) about one GPU
_NO_GPU_WORDS = ("No devices were found", "couldn't communicate with the NVIDIA driver")


@dataclass(frozen=True)
class Problem:
    status: Status  # WARN or FAIL
    rule: str  # a stable name for the rule, for reports and tests
    gpus: str  # which GPU(s): "GPU 0 (00000000:18:00.0)"
    message: str


def run(ctx: CheckContext) -> Outcome:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ctx.no_gpu("no NVIDIA driver found (no nvidia-smi on PATH); in Docker, run with --gpus all")
    # Leave the runner time to collect the result even when nvidia-smi has to be killed and abandoned.
    timeout_s = max(1.0, min(SMI_TIMEOUT_S, ctx.timeout_s - nvsmi.KILL_GRACE_S - 5.0))
    try:
        answer = nvsmi.run_smi([smi, "-q"], timeout_s)
    except nvsmi.SmiHung as err:
        return Outcome(Status.FAIL, str(err), {"nvidia_smi_timeout_s": timeout_s, "abandoned": err.abandoned},
                       "nvidia-smi hung")
    except OSError as err:
        return Outcome(Status.FAIL, f"nvidia-smi -q could not be run: {err}", {}, "nvidia-smi failed")
    said = (answer.stdout + answer.stderr).strip().splitlines()
    first = said[0].strip() if said else f"exit {answer.returncode}, no output"
    if answer.returncode != 0:
        if any(words in first for words in _NO_GPU_WORDS):
            return ctx.no_gpu(f"no GPU: nvidia-smi says {first!r}", {"nvidia_smi_exit": answer.returncode})
        return Outcome(Status.FAIL, f"nvidia-smi -q failed (exit {answer.returncode}): {first}",
                       {"nvidia_smi_exit": answer.returncode}, "nvidia-smi failed")
    facts = nvsmi.parse_q(answer.stdout)
    if not facts["gpus"]:
        return ctx.no_gpu(f"no GPU: nvidia-smi -q lists none ({first})")
    return outcome(facts)


def outcome(facts: Dict[str, Any]) -> Outcome:
    """The check's outcome for a parsed `nvidia-smi -q` (nvsmi.parse_q)."""
    problems = examine(facts)
    gpus = facts["gpus"]
    figures: Dict[str, Any] = {
        "driver": facts["driver"], "attached_gpus": facts["attached"],
        "gpus": [summary(index, gpu) for index, gpu in enumerate(gpus)],
        "problems": [{"status": p.status.value, "rule": p.rule, "gpus": p.gpus, "message": p.message}
                     for p in problems],
    }
    key_figure = f"{len(gpus)} GPU(s)"
    fails = [f"{p.gpus}: {p.message}" for p in problems if p.status is Status.FAIL]
    warns = [f"{p.gpus}: {p.message}" for p in problems if p.status is Status.WARN]
    if fails:  # the warnings too: one run should tell everything that is wrong
        return Outcome(Status.FAIL, "; ".join(fails) + ("; also (warnings): " + "; ".join(warns) if warns else ""),
                       figures, key_figure)
    if warns:
        return Outcome(Status.WARN, "; ".join(warns), figures, key_figure)
    idle = sum(1 for gpu in gpus if _idle(gpu["fields"]) is not False)
    link = (f"; PCIe link not judged on {idle} GPU(s) idle or not saying (links narrow and slow down when idle)"
            if idle else "")
    return Outcome(Status.PASS, f"{len(gpus)} GPU(s): no pending or failed memory repairs, no uncorrectable ECC "
                                f"errors since the driver loaded, clocks not held down{link}", figures, key_figure)


def examine(facts: Dict[str, Any]) -> List[Problem]:
    """Every problem the report shows, GPU by GPU, then the host's."""
    problems: List[Problem] = []
    gpus = facts["gpus"]
    for index, gpu in enumerate(gpus):
        label = f"GPU {index} ({gpu['bus_id']})"
        fields = gpu["fields"]
        problems += [Problem(status, rule, label, message) for status, rule, message in (
            *_memory(fields), *_ecc(fields), *_pcie(fields), *_clocks(fields), *_recovery(fields))]
    problems += _persistence(facts)
    return problems


def _memory(fields: nvsmi.Section) -> List[_Found]:
    found: List[_Found] = []
    rows = nvsmi.section_of(fields, "Remapped Rows")
    # Row remapping (A100 and later). NVIDIA, "GPU Memory Error Management" (Error Recovery and Response
    # Flags): a failed remapping means a bank ran out of spare rows, which is an RMA criterion ("RMA
    # Policy Thresholds for Row-Remapping"); DCGM's level 1 fails it (DCGM_FR_ROW_REMAP_FAILURE).
    if _yes(rows.get("Remapping Failure Occurred")):
        found.append((Status.FAIL, "row-remap-failure", "a memory row remapping failed (a bank has no spare rows "
                                                        "left): the GPU needs service (NVIDIA's RMA policy)"))
    # A pending remapping is applied at the next GPU reset. WARN, not FAIL: NVIDIA's same page says that
    # with the flag set "unaffected applications can continue running without affecting accuracy and
    # performance, and new workloads can be launched" (error containment and page blacklisting cover the
    # bad row meanwhile). DCGM's readiness gate fails it; verify asks "fit to train?", which it is.
    if _yes(rows.get("Pending")):
        uncorrectable = _count(rows.get("Uncorrectable Error"))
        cause = f" ({uncorrectable} for uncorrectable errors)" if uncorrectable else ""
        found.append((Status.WARN, "row-remap-pending", f"a memory row remapping is pending{cause}: reset the GPU "
                                                        "(nvidia-smi -r, or reboot) to apply it"))
    # Page retirement (Kepler to Volta; N/A from Ampere on). Pending pages are retired at the next driver
    # load (NVML, nvmlDeviceGetRetiredPagesPendingStatus: "pending retirement and need a reboot to fully
    # retire"). WARN like a pending remap (DCGM fails both); the uncorrectable error that caused it, if
    # recent, fails under the ECC rule.
    pages = nvsmi.section_of(fields, "Retired Pages")
    if any(_yes(pages.get(key)) for key in ("Pending Page Blacklist", "Pending Page Retirement", "Pending")):
        found.append((Status.WARN, "retired-pages-pending", "memory pages with ECC errors are pending retirement: "
                                                            "reboot (or reset the GPU) to retire them"))
    single, double = _count(pages.get("Single Bit ECC")), _count(pages.get("Double Bit ECC"))
    if (single or 0) + (double or 0) >= RETIRED_PAGES_LIMIT:
        found.append((Status.FAIL, "retired-pages-limit",
                      f"{(single or 0) + (double or 0)} memory pages retired ({single or 0} for single-bit, "
                      f"{double or 0} for double-bit ECC errors), at or over DCGM's limit of {RETIRED_PAGES_LIMIT}: "
                      "the GPU needs service"))
    return found


def _ecc(fields: nvsmi.Section) -> List[_Found]:
    # Volatile counts start at 0 each time the driver loads (NVML, nvmlEccCounterType_t), so a non-zero
    # uncorrectable count means an error since then: the job that met it was stopped (Xid 48/94/95), and
    # after an uncontained one (Xid 95) the GPU must be reset before it can be trusted. FAIL, as DCGM's
    # health watch does (DCGM_FR_VOLATILE_DBE_DETECTED: "Drain the GPU and reset it or reboot the node").
    # The lifetime (aggregate) count is history that row remapping and page retirement already act on.
    errors = uncorrectable_volatile(fields)
    if errors:
        return [(Status.FAIL, "volatile-uncorrectable-ecc",
                 f"{errors} uncorrectable ECC error(s) since the driver loaded: drain the GPU and reset it "
                 "(nvidia-smi -r) or reboot before trusting its results")]
    return []


def uncorrectable_volatile(fields: nvsmi.Section) -> int:
    """Uncorrectable ECC errors since the driver loaded: every "...Uncorrectable..." count (DRAM, SRAM)
    under ECC Errors > Volatile, or "Double Bit" > "Total" in older drivers' layout."""
    volatile = nvsmi.section_of(nvsmi.section_of(fields, "ECC Errors"), "Volatile")
    total = sum(_count(value) or 0 for key, value in volatile.items() if "Uncorrectable" in key)
    return total + (_count(nvsmi.field_value(volatile, "Double Bit", "Total")) or 0)


def _pcie(fields: nvsmi.Section) -> List[_Found]:
    # nvidia-smi --help-query-gpu, on pcie.link.gen.current and pcie.link.width.current alike: "These may
    # be reduced when the GPU is not in use" (power saving). Published idle reports show it for the width
    # too (an A16 at x4 of x16, a V100 at x2 of x16; both in verify's test fixtures). So the link is
    # judged only while the GPU is busy (clocks event reason "Idle" is "Not Active"); an idle or unknown
    # state is no finding. "Max" is what this GPU and slot can do together (NVML: an x16 GPU in an x8 slot says
    # max x8), so current < max is a link that trained narrower or slower than it can: a seating, riser
    # or slot fault. WARN: the GPU computes correctly, host-to-GPU copies are slower.
    link = nvsmi.section_of(nvsmi.section_of(fields, "PCI"), "GPU Link Info")
    if _idle(fields) is not False:
        return []
    found: List[_Found] = []
    width = _count(nvsmi.field_value(link, "Link Width", "Current"))
    max_width = _count(nvsmi.field_value(link, "Link Width", "Max"))
    if width and max_width and width < max_width:
        found.append((Status.WARN, "pcie-width", f"PCIe link is x{width} of x{max_width} while busy: reseat the "
                                                 "card, check its riser and slot (host-to-GPU copies run at "
                                                 f"{width / max_width:.0%} of full speed)"))
    gen = _count(nvsmi.field_value(link, "PCIe Generation", "Current"))
    max_gen = _count(nvsmi.field_value(link, "PCIe Generation", "Max"))
    if gen and max_gen and gen < max_gen:
        found.append((Status.WARN, "pcie-generation", f"PCIe link runs at gen {gen} of gen {max_gen} while busy: "
                                                      "check the slot, riser and BIOS PCIe settings"))
    return found


def _clocks(fields: nvsmi.Section) -> List[_Found]:
    # NVML's clocks event reasons (nvmlClocksEventReasons): HW Slowdown halves the clocks or worse, for
    # heat, an external power brake (e.g. from the power supply) or too high a power draw; HW Power Brake
    # is that external signal; HW/SW Thermal Slowdown mean the GPU is too hot. WARN: results stay correct,
    # only slower, and NVML notes HW Slowdown "may be also reported during PState or clock change".
    active = [name for name in SLOWDOWN_REASONS if _reasons(fields).get(name) == "Active"]
    if not active:
        return []
    hints = []
    if any("Thermal" in name for name in active):
        hints.append("the GPU is too hot: check cooling and airflow")
    if "HW Power Brake Slowdown" in active:
        hints.append("the system asserted the power brake: check the power supplies")
    if not hints:
        hints.append("heat, power brake or power draw: check cooling and power delivery")
    return [(Status.WARN, "clocks-slowdown", f"clocks held down ({', '.join(active)} active): {'; '.join(hints)}")]


def _recovery(fields: nvsmi.Section) -> List[_Found]:
    # The driver's own verdict after a fault. NVIDIA, "GPU Memory Error Management" (Error Recovery and
    # Response Flags): a reset or reboot recovery action means the GPU cannot be used until it is done;
    # the drain actions mean reduced capacity (finish or move the work, then act).
    if _yes(nvsmi.field_value(fields, "GPU Reset Status", "Reset Required")):
        return [(Status.FAIL, "reset-required", "the driver says the GPU needs a reset (nvidia-smi -r) or a reboot "
                                                "before it can be used")]
    found: List[_Found] = []
    if _yes(nvsmi.field_value(fields, "GPU Reset Status", "Drain and Reset Recommended")):
        found.append((Status.WARN, "drain-and-reset", "the driver recommends draining the GPU's work and resetting it"))
    action = nvsmi.field_value(fields, "GPU Recovery Action")
    if action and action.lower() != "none":
        drain_only = "drain" in action.lower() and "reset" not in action.lower()
        found.append((Status.WARN if drain_only else Status.FAIL, "recovery-action",
                      f"the driver asks for a recovery action: {action}" +
                      ("" if drain_only else " (the GPU cannot be trusted until it is done)")))
    return found


def _persistence(facts: Dict[str, Any]) -> List[Problem]:
    # Without persistence mode the driver tears a GPU down when its last client exits and sets it up again
    # for the next (NVIDIA, "Driver Persistence"): every job start pays that per GPU, and volatile ECC
    # counts reset each time (NVML), hiding the errors judged above. On one GPU that mostly costs a second
    # (and a display keeps the driver loaded); on a multi-GPU training host it is set up with
    # nvidia-persistenced. WARN, as DCGM's level 1 does (DCGM_FR_PERSISTENCE_MODE), for hosts with more than
    # one GPU.
    gpus = facts["gpus"]
    host_gpus = facts["attached"] or len(gpus)
    off = [index for index, gpu in enumerate(gpus)
           if nvsmi.field_value(gpu["fields"], "Persistence Mode") == "Disabled"]
    if host_gpus < 2 or not off:
        return []
    which = "GPU " + ", ".join(str(index) for index in off)
    return [Problem(Status.WARN, "persistence-off", which,
                    f"persistence mode is Disabled on this {host_gpus}-GPU host: each job waits for the driver "
                    "to set the GPUs up again and volatile ECC counts reset between jobs; run "
                    "nvidia-persistenced (or `nvidia-smi -pm 1` as root)")]


def summary(index: int, gpu: Dict[str, Any]) -> Dict[str, Any]:
    """The facts each rule read, for the report's figures."""
    fields = gpu["fields"]
    link = nvsmi.section_of(nvsmi.section_of(fields, "PCI"), "GPU Link Info")
    rows = nvsmi.section_of(fields, "Remapped Rows")
    pages = nvsmi.section_of(fields, "Retired Pages")
    reasons = _reasons(fields)
    return {
        "index": index, "bus_id": gpu["bus_id"], "name": gpu["name"],
        "persistence_mode": nvsmi.field_value(fields, "Persistence Mode"),
        "idle": _idle(fields),
        "pcie": {"gen": nvsmi.field_value(link, "PCIe Generation", "Current"),
                 "max_gen": nvsmi.field_value(link, "PCIe Generation", "Max"),
                 "width": nvsmi.field_value(link, "Link Width", "Current"),
                 "max_width": nvsmi.field_value(link, "Link Width", "Max")},
        "volatile_uncorrectable_ecc": uncorrectable_volatile(fields),
        "remapped_rows": {key: rows.get(key) for key in ("Correctable Error", "Uncorrectable Error", "Pending",
                                                         "Remapping Failure Occurred") if key in rows} or None,
        "retired_pages": {key: value for key, value in pages.items() if isinstance(value, str)} or None,
        "clocks_held_down_by": [name for name in SLOWDOWN_REASONS if reasons.get(name) == "Active"],
    }


def _reasons(fields: nvsmi.Section) -> nvsmi.Section:
    """The clocks event reasons (named "Clocks Throttle Reasons" by drivers before 535)."""
    return nvsmi.section_of(fields, "Clocks Event Reasons", "Clocks Throttle Reasons")


def _idle(fields: nvsmi.Section) -> Optional[bool]:
    """Whether nothing runs on the GPU (the "Idle" clocks event reason); None when not told."""
    idle = _reasons(fields).get("Idle")
    return {"Active": True, "Not Active": False}.get(idle) if isinstance(idle, str) else None


def _yes(value: Optional[str]) -> bool:
    return (value or "").strip().lower() == "yes"


def _count(value: Optional[str]) -> Optional[int]:
    """The leading integer of a field ("16x" -> 16, "0" -> 0), or None when it has none."""
    match = re.match(r"\s*(\d+)", value or "")
    return int(match.group(1)) if match else None
