"""cuda: the devices, whether this build has code for them, a kernel, and a matmul checked against the CPU."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List

import torch

from verify import archs, compat
from verify.checks._common import WHICH_TAG_HINT, compare, gpu_missing_reason
from verify.context import CheckContext
from verify.result import Findings, Outcome

# A K=512 fp32 matmul of unit-normal inputs: entries are ~sqrt(512) ~ 23 and cuBLAS sums in another
# order than the CPU, so errors of ~1e-6 relative are normal. TF32 (10-bit mantissa) would show
# ~1e-3, garbage far more: 1e-4 separates them with margin on both sides.
# Test-only (verify.faults): hang after a CUDA context exists, the way a wedged GPU holds a check, so the
# runner's kill is proven on a live context (the generic "hang" fires before any CUDA call).
FAULTS = ("hang-with-context",)
MATMUL_TOLERANCE = 1e-4
MATMUL_SIZE = 512
KERNEL_ELEMENTS = 1 << 20


def _device_figures(index: int) -> Dict[str, Any]:
    props = torch.cuda.get_device_properties(index)
    return {
        "index": index,
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm": archs.sm_name(props.major, props.minor),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
    }


def _check_coverage(found: Findings, devices: List[Dict[str, Any]], arch_list: List[str],
                    promised: List[str]) -> None:
    missing_promise = sorted(set(promised) - set(arch_list))
    if promised and missing_promise:
        found.fail(f"the manifest promises {', '.join(missing_promise)} but torch was built for "
                   f"{', '.join(arch_list) or 'nothing'}")
    for device in devices:
        major, minor = (int(part) for part in device["capability"].split("."))
        device["code"] = archs.coverage(major, minor, arch_list).describe(device["sm"])
        verdict = compat.arch_verdict(device["name"], (major, minor), arch_list)
        if verdict.status == compat.FAIL:
            found.fail(f"{verdict.message}; {WHICH_TAG_HINT}")
        elif verdict.status == compat.WARN:
            found.warn(verdict.message)


def _tf32_forced() -> str:
    """'TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1' when that variable makes torch use TF32 for every fp32 matmul,
    whatever allow_tf32 says (so the check's own allow_tf32=False does not hold)."""
    value = os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")
    return f"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE={value}" if value and value.strip() == "1" else ""


def _run_kernels(found: Findings, device: Dict[str, Any]) -> None:
    where = torch.device("cuda", device["index"])
    values = torch.arange(KERNEL_ELEMENTS, device=where, dtype=torch.int64)
    total = int((values * 2).sum())
    expected = KERNEL_ELEMENTS * (KERNEL_ELEMENTS - 1)
    if total != expected:
        found.fail(f"GPU {device['index']}: a reduction kernel returned {total}, expected {expected}")

    generator = torch.Generator().manual_seed(device["index"])
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        on_gpu = (a.to(where) @ b.to(where)).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    ok, error = compare(on_gpu, a @ b, MATMUL_TOLERANCE)
    device["matmul_rel_error"] = error
    forced = _tf32_forced()
    if not ok and forced:
        # The user asked for TF32 (10-bit mantissa) in every fp32 matmul: a ~1e-3 difference is that setting.
        found.warn(f"GPU {device['index']}: fp32 matmul differs from the CPU by {error:.2e} because {forced} forces "
                   "TF32 for fp32 matmuls (unset it for full fp32 precision)")
    elif not ok:
        found.fail(f"GPU {device['index']}: fp32 matmul differs from the CPU by {error:.2e} (tolerance "
                   f"{MATMUL_TOLERANCE:g}): the GPU or its libraries compute wrong results")
    free, _ = torch.cuda.mem_get_info(where)
    device["memory_free_gib"] = round(free / 2**30, 1)


def _hang_holding_a_context(gpu: bool) -> None:
    if gpu:
        torch.ones(1, device="cuda").sum().item()  # creates the context and runs a kernel on it
    while True:
        time.sleep(3600)


def run(ctx: CheckContext) -> Outcome:
    missing = gpu_missing_reason()
    if ctx.fault == "hang-with-context":
        _hang_holding_a_context(missing is None)
    if missing:
        return ctx.no_gpu(missing)
    found = Findings()
    devices = [_device_figures(index) for index in range(torch.cuda.device_count())]
    arch_list = list(torch.cuda.get_arch_list())
    promised = list(ctx.manifest.archs) if ctx.manifest else []
    found.figures.update({"devices": devices, "arch_list": arch_list, "manifest_archs": promised,
                          "device_count": len(devices)})
    names = sorted({device["name"] for device in devices})
    found.key_figure = f"{len(devices)}x {names[0]} {devices[0]['sm']}" if len(names) == 1 else f"{len(devices)} GPUs"

    _check_coverage(found, devices, arch_list, promised)
    if found.failed:  # launching now would only repeat "no kernel image is available"
        return found.outcome("")
    for device in devices:
        _run_kernels(found, device)
    return found.outcome(f"{len(devices)} GPU(s): kernels run, fp32 matmul matches the CPU; "
                         + "; ".join(f"{d['sm']}: {d['code']}" for d in devices[:1]))
