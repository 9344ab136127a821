"""Helpers the checks share: finding the GPU (or saying why there is none) and comparing tensors."""
from __future__ import annotations

import os
import shutil
import warnings
from typing import Any, Mapping, Optional, Sequence, Tuple

import torch

from verify import archs, nvsmi, versions

# Values of CUDA_VISIBLE_DEVICES that make no GPU visible on purpose (the CUDA runtime enumerates none).
_HIDES_EVERY_GPU = ("", "-1", "none", "NoDevFiles")


# verify sees only its own image; which tag fits this GPU and driver is the matrix's question, asked on the host.
WHICH_TAG_HINT = ("the newest tag that works on this host: `python build.py --preflight` there (no tag; "
                  "pytorch-cuda's repository, no Docker needed)")


def visibility_hides_every_gpu(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """'CUDA_VISIBLE_DEVICES=...' when that variable is set so that no GPU is visible, else None.

    A choice of the user's (or a scheduler's), not a driver failure: checks say "no GPU made visible".
    """
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in _HIDES_EVERY_GPU:
        return f"CUDA_VISIBLE_DEVICES={visible!r}"
    return None


def mig_without_device(gpus: Sequence[Mapping[str, Any]], visible_count: int) -> Optional[str]:
    """Why CUDA sees no GPU when a GPU has MIG mode on and no MIG device was handed to this process.

    `gpus`: nvsmi.parse_q's GPUs (each with its "mig_mode", "Enabled" or "Disabled")."""
    enabled = [str(gpu.get("name") or "a GPU") for gpu in gpus if gpu.get("mig_mode") == "Enabled"]
    if not enabled or visible_count:
        return None
    return (f"{enabled[0]} has MIG mode enabled but no MIG device is visible: CUDA cannot use a MIG-enabled GPU "
            "as a whole; create GPU instances (`nvidia-smi mig -cgi ... -C`) and expose one "
            "(`--gpus device=0:0`, NVIDIA_VISIBLE_DEVICES=MIG-<uuid>), or disable MIG (`nvidia-smi -mig 0`)")


def gpu_missing_reason() -> Optional[str]:
    """None when torch can use a GPU; otherwise why not, in words a user can act on."""
    if torch.version.cuda is None:
        return f"no GPU: torch {torch.__version__} is a CPU build"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return None
    hidden = visibility_hides_every_gpu()
    if hidden:
        return f"no GPU made visible: {hidden} hides every GPU"
    if not os.path.exists("/proc/driver/nvidia/version") and shutil.which("nvidia-smi") is None:
        return "no GPU: no NVIDIA driver found (in Docker, run with --gpus all)"
    mig = mig_without_device(nvsmi.gpus_in_q(), 0)
    if mig:
        return f"no GPU: {mig}"
    detail = str(caught[-1].message).strip().splitlines()[0] if caught else "torch.cuda.is_available() is False"
    return f"no GPU: {detail}"


NOT_COVERED = "is not covered by this build's kernels (see cuda)"


def on_the_cpu_because(reason: Optional[str]) -> str:
    """'; <reason>' for a check that ran on the CPU although a GPU is there (one this build has no
    kernels for), so its PASS does not read as a GPU result; '' otherwise."""
    return f"; {reason}" if reason and NOT_COVERED in reason else ""


def gpu_unusable_reason() -> Optional[str]:
    """None when torch can run kernels on every visible GPU; otherwise why not.

    A GPU this build has no code for is the cuda check's finding (it names the tags that would
    work). The checks that would launch kernels after it say "not covered (see cuda)" and run on the
    CPU or skip, instead of six failures that all read "no kernel image is available".
    """
    missing = gpu_missing_reason()
    if missing:
        return missing
    arch_list = list(torch.cuda.get_arch_list())
    if not arch_list:  # the build states nothing to compare with: let the kernels themselves tell
        return None
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        if not archs.coverage(major, minor, arch_list).ok:
            return f"GPU {index} ({torch.cuda.get_device_name(index)}, {archs.sm_name(major, minor)}) {NOT_COVERED}"
    return None


def nccl_version() -> Optional[str]:
    """The NCCL version torch uses ('2.20.5'), or None on a CPU build or a build without NCCL."""
    if torch.version.cuda is None:
        return None
    try:
        return versions.nccl_version_string(torch.cuda.nccl.version())
    except (AttributeError, RuntimeError):
        return None


def compare(actual: torch.Tensor, reference: torch.Tensor, tolerance: float) -> Tuple[bool, float]:
    """Whether `actual` matches `reference` within `tolerance` relative to the reference's scale.

    Returns (ok, error) where error is max|actual - reference| / max|reference|: one number a
    report can show. The test is torch.allclose with rtol=tolerance and atol=tolerance*scale, so
    elements near zero are judged against the tensor's magnitude, not their own.
    """
    actual = actual.detach().to("cpu", torch.float64)
    reference = reference.detach().to("cpu", torch.float64)
    scale = float(reference.abs().max()) or 1.0
    error = float((actual - reference).abs().max()) / scale
    finite = bool(torch.isfinite(actual).all())
    return finite and torch.allclose(actual, reference, rtol=tolerance, atol=tolerance * scale), error
