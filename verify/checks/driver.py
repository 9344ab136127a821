"""driver: the NVIDIA driver's version vs what the image's CUDA needs (verify/compat.py), and what torch sees."""
from __future__ import annotations

import os
import shutil
import warnings
from typing import Optional, Tuple

import torch

from verify import compat, nvsmi, versions
from verify.checks._common import WHICH_TAG_HINT, mig_without_device, visibility_hides_every_gpu
from verify.context import CheckContext
from verify.manifest import Manifest
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
    try:  # time-limited, and abandoned if even SIGKILL cannot end it (stuck in a hung driver)
        done = nvsmi.run_smi([smi, "--query-gpu=driver_version", "--format=csv,noheader"], NVIDIA_SMI_TIMEOUT_S)
    except nvsmi.SmiHung as err:
        raise DriverQueryError(str(err)) from err
    version = versions.parse_driver_version(done.stdout)
    if done.returncode != 0 or version is None:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise DriverQueryError(f"nvidia-smi failed (exit {done.returncode}): {detail[0] if detail else 'no output'}")
    return version, "nvidia-smi"


def judge(driver: str, manifest: Optional[Manifest]) -> Optional[compat.Verdict]:
    """The driver rule applied to what the manifest states; None when it states no CUDA or driver."""
    if manifest is None or not manifest.cuda or not (manifest.driver_floor or manifest.toolkit_driver):
        return None
    return compat.driver_verdict(driver, manifest.cuda, manifest.driver_floor, manifest.toolkit_driver)


def run(ctx: CheckContext) -> Outcome:
    found = Findings()
    manifest = ctx.manifest
    cuda = (manifest.cuda if manifest else None) or torch.version.cuda
    found.figures.update({
        "driver_floor": manifest.driver_floor if manifest else None,
        "toolkit_driver": manifest.toolkit_driver if manifest else None,
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

    verdict = judge(driver, manifest)
    found.figures["verdict"] = verdict.status if verdict else None
    if verdict is not None and verdict.status == compat.FAIL:
        found.fail(f"{verdict.message}; {WHICH_TAG_HINT}")
    elif verdict is not None and verdict.status == compat.WARN:
        found.warn(verdict.message)
    hidden = visibility_hides_every_gpu()
    if count == 0 and hidden and not found.failed:
        # The user's (or the scheduler's) choice, not a driver fault: judged like any run without a GPU.
        said = verdict.message if verdict is not None else f"driver {driver}"
        return ctx.no_gpu(f"no GPU made visible: {hidden} hides every GPU ({said})", found.figures,
                          found.key_figure)
    if count == 0:
        mig = mig_without_device(nvsmi.gpus_in_q(), count) if torch.version.cuda else None
        if torch.version.cuda is None:
            why = f"torch {torch.__version__} is a CPU build"
        elif hidden:
            why = f"{hidden} hides every GPU"
        elif mig:
            why = mig
        elif caught:
            why = str(caught[-1].message).strip().splitlines()[0]
        else:
            why = "no device is visible (in Docker, run with --gpus all)"
        found.fail(f"driver {driver} is loaded but torch sees no GPU: {why}")

    said = verdict.message if verdict is not None and verdict.status == compat.OK else \
        f"driver {driver} (no manifest requirement to compare with)" if verdict is None else f"driver {driver}"
    return found.outcome(f"{said}; {count} GPU(s) visible to torch")
