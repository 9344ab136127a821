"""Helpers the checks share: finding the GPU (or saying why there is none) and comparing tensors."""
from __future__ import annotations

import os
import shutil
import warnings
from typing import Optional, Tuple

import torch

from verify import versions


def gpu_missing_reason() -> Optional[str]:
    """None when torch can use a GPU; otherwise why not, in words a user can act on."""
    if torch.version.cuda is None:
        return f"no GPU: torch {torch.__version__} is a CPU build"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"no GPU: CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    if not os.path.exists("/proc/driver/nvidia/version") and shutil.which("nvidia-smi") is None:
        return "no GPU: no NVIDIA driver found (in Docker, run with --gpus all)"
    detail = str(caught[-1].message).strip().splitlines()[0] if caught else "torch.cuda.is_available() is False"
    return f"no GPU: {detail}"


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

