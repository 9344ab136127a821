"""perf (opt-in, GPU only): matmul TFLOP/s, device memory and host-to-device bandwidth vs published peaks.

Slow is a warning, not a failure: a shared, power-capped or throttled GPU still trains correctly.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Optional

import torch

from verify import compat, perfmath
from verify.checks._common import gpu_unusable_reason
from verify.context import CheckContext
from verify.result import Findings, Outcome

MATMUL_N = 8192
MATMUL_ITERATIONS = 10
WARMUP = 3
COPY_BYTES = 1 << 30
HOST_BYTES = 256 << 20


def _time_cuda(action: Callable[[], object], iterations: int) -> float:
    """Seconds per call of `action`, timed with CUDA events after a warm-up."""
    for _ in range(WARMUP):
        action()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iterations):
        action()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0 / iterations


def _matmul_tflops(dtype: torch.dtype, tf32: bool) -> float:
    a = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=dtype)
    b = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=dtype)
    out = torch.empty(MATMUL_N, MATMUL_N, device="cuda", dtype=dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        seconds = _time_cuda(lambda: torch.mm(a, b, out=out), MATMUL_ITERATIONS)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return perfmath.matmul_tflops(MATMUL_N, seconds)


def _device_copy_gbps(size: int) -> float:
    source = torch.empty(size // 4, dtype=torch.float32, device="cuda").fill_(1.0)
    target = torch.empty_like(source)
    seconds = _time_cuda(lambda: target.copy_(source), 10)
    return 2 * size / seconds / 1e9  # each copy reads and writes every byte


def _host_to_device_gbps(pinned: bool) -> float:
    host = torch.ones(HOST_BYTES // 4, dtype=torch.float32)
    if pinned:
        host = host.pin_memory()
    device = torch.empty_like(host, device="cuda")
    for _ in range(WARMUP):
        device.copy_(host, non_blocking=pinned)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(5):
        device.copy_(host, non_blocking=pinned)
    torch.cuda.synchronize()
    return 5 * HOST_BYTES / (time.perf_counter() - started) / 1e9


def judge(found: Findings, measured: Dict[str, Optional[float]], peak: Optional[perfmath.Peak]) -> None:
    """Each figure against the published peak: above it the timing is wrong (FAIL), below half it is slow (WARN)."""
    slow: List[str] = []
    impossible: List[str] = []
    if peak is not None:
        for key in ("tf32_tflops", "bf16_tflops", "fp16_tflops", "memory_gbps"):
            value, reference = measured[key], getattr(peak, key)
            share = perfmath.percent_of(value, reference) if value is not None else None
            found.figures[f"{key}_pct_of_peak"] = share
            if share is None:
                continue
            said = f"{key.split('_')[0]} {value:.0f} is {share:.0f}% of the {peak.label}'s {reference:g}"
            if share > 100 * perfmath.IMPOSSIBLE_FRACTION:
                impossible.append(said)
            elif share < 100 * perfmath.SLOW_FRACTION and peak.warn_when_slow:
                slow.append(said)
    if impossible:
        found.fail("above the published peak, which no GPU reaches: " + "; ".join(impossible) + " (the timing is "
                   "wrong, e.g. a kernel not waited for, or the device is not the part its name says)")
    if slow:
        found.warn("below half the published peak: " + "; ".join(slow) + " (" + _slow_hint(found) + ")")


def _slow_hint(found: Findings) -> str:
    """Where to look first. NVIDIA_TF32_OVERRIDE=0 turns TF32 off in cuBLAS and cuDNN whatever torch asks,
    so tf32 matmuls run at the plain fp32 rate (about a tenth): a setting, not a power cap."""
    override = os.environ.get("NVIDIA_TF32_OVERRIDE")
    found.figures["NVIDIA_TF32_OVERRIDE"] = override
    if override is not None and override.strip() == "0":
        return ("NVIDIA_TF32_OVERRIDE=0 is set: it disables TF32 in cuBLAS, so tf32 runs at the fp32 rate; "
                "unset it, then check `nvidia-smi -q -d CLOCK,POWER` if it stays slow")
    return "check `nvidia-smi -q -d CLOCK,POWER` for power caps or throttling, and other processes on the GPU"


def run(ctx: CheckContext) -> Outcome:
    missing = gpu_unusable_reason()
    if missing:
        return ctx.no_gpu(missing)
    found = Findings()
    name = torch.cuda.get_device_name(0)
    peak = perfmath.lookup_peak(name)
    free, _ = torch.cuda.mem_get_info(0)
    found.figures.update({"device": name, "peak_table_entry": peak.label if peak else None,
                          "peak_source": peak.source if peak else None})

    measured: Dict[str, Optional[float]] = {
        "tf32_tflops": _matmul_tflops(torch.float32, tf32=True),
        # Native bf16 only: torch >= 2.3 emulates it on V100/T4, which would time emulation.
        "bf16_tflops": (_matmul_tflops(torch.bfloat16, tf32=False)
                        if compat.native_bf16(torch.cuda.get_device_capability(0)) else None),
        "fp16_tflops": _matmul_tflops(torch.float16, tf32=False),
        "memory_gbps": _device_copy_gbps(COPY_BYTES if free > 4 * COPY_BYTES else COPY_BYTES // 4),
        "h2d_pinned_gbps": _host_to_device_gbps(pinned=True),
        "h2d_pageable_gbps": _host_to_device_gbps(pinned=False),
    }
    for key, value in measured.items():
        found.figures[key] = round(value, 1) if value is not None else None
    judge(found, measured, peak)
    best = measured["bf16_tflops"] or measured["fp16_tflops"] or 0.0
    found.key_figure = f"{best:.0f} TFLOP/s 16-bit"
    table = f"vs {peak.label} peaks" if peak else f"no published peak on file for {name}: no percentages"
    return found.outcome(f"matmul tf32 {measured['tf32_tflops']:.0f} / 16-bit {best:.0f} TFLOP/s, memory "
                         f"{measured['memory_gbps']:.0f} GB/s, H2D pinned {measured['h2d_pinned_gbps']:.1f} GB/s "
                         f"({table})")
