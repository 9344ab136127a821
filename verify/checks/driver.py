"""driver: the NVIDIA driver's version vs the minimum the image's CUDA needs, and what torch sees."""
from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from typing import Optional, Tuple

import torch

from verify import versions
from verify.context import CheckContext
from verify.result import Findings, Outcome

PROC_VERSION = "/proc/driver/nvidia/version"
NVIDIA_SMI_TIMEOUT_S = 30


class DriverQueryError(Exception):
    """The driver is there but could not be asked its version."""


def read_driver_version() -> Tuple[Optional[str], Optional[str]]:
    """(version, where it was read) or (None, None) when no NVIDIA driver is present."""
    if os.path.exists(PROC_VERSION):
        try:
            with open(PROC_VERSION, encoding="utf-8", errors="replace") as handle:
                version = versions.parse_driver_version(handle.read())
        except OSError:
            version = None
        if version:
            return version, PROC_VERSION
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, None
    try:
        done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise DriverQueryError(f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT_S} s: the driver may be hung "
                               "(check `dmesg` for Xid errors)") from err
    version = versions.parse_driver_version(done.stdout)
    if done.returncode != 0 or version is None:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise DriverQueryError(f"nvidia-smi failed (exit {done.returncode}): {detail[0] if detail else 'no output'}")
    return version, "nvidia-smi"


def too_old_message(driver: str, minimum: str, cuda: Optional[str]) -> str:
    target = f"CUDA {cuda}" if cuda else "this image"
    return (f"driver {driver} is older than {minimum}, the minimum for {target}: upgrade the NVIDIA driver "
            "or use a tag built for an older CUDA")


def run(ctx: CheckContext) -> Outcome:
    found = Findings()
    manifest = ctx.manifest
    minimum = manifest.min_driver if manifest else None
    cuda = (manifest.cuda if manifest else None) or torch.version.cuda
    found.figures.update({
        "min_driver": minimum,
        "cuda": cuda,
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "NVIDIA_VISIBLE_DEVICES": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
    })
    try:
        driver, source = read_driver_version()
    except DriverQueryError as err:
        found.fail(str(err))
        return found.outcome("")
    found.figures.update({"driver": driver, "source": source})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = torch.cuda.device_count() if torch.version.cuda else 0
    found.figures["device_count"] = count
    if driver is None:
        return ctx.no_gpu(f"no NVIDIA driver found (no {PROC_VERSION}, no nvidia-smi on PATH); "
                          "in Docker, run with --gpus all", found.figures)
    found.key_figure = f"driver {driver}"

    if minimum and not versions.at_least(driver, minimum):
        found.fail(too_old_message(driver, minimum, cuda))
    if count == 0:
        if torch.version.cuda is None:
            why = f"torch {torch.__version__} is a CPU build"
        elif (os.environ.get("CUDA_VISIBLE_DEVICES") or "x").strip() in ("", "-1"):
            why = f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU"
        elif caught:
            why = str(caught[-1].message).strip().splitlines()[0]
        else:
            why = "no device is visible (in Docker, run with --gpus all)"
        found.fail(f"driver {driver} is loaded but torch sees no GPU: {why}")

    floor = f" >= {minimum}, the minimum for CUDA {cuda}" if minimum else " (no manifest minimum to compare with)"
    return found.outcome(f"driver {driver}{floor}; {count} GPU(s) visible to torch")
