"""cudnn: which cuDNN is loaded vs what torch was built with and the manifest promises; conv2d on GPU vs CPU."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from verify import compat, versions
from verify.checks._common import compare, gpu_unusable_reason
from verify.context import CheckContext
from verify.result import Findings, Outcome

FAULTS = ("runtime-mismatch",)

# Tolerances relative to each output's largest magnitude, against a float64 CPU reference.
# fp32: cuDNN may pick Winograd/FFT algorithms whose rounding differs (~1e-6..1e-5): 1e-4.
# fp16 (11-bit significand, fp32 accumulation) rounds inputs at ~5e-4: 1e-2.
# bf16 (8-bit significand) rounds inputs at ~4e-3: 5e-2. TF32 is disabled for the fp32 comparison.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _version_tuple(getter: str) -> Optional[Tuple[int, int, int]]:
    module = getattr(torch._C, "_cudnn", None)
    function = getattr(module, getter, None) if module is not None else None
    return tuple(function()) if function else None


def _pretend_another_runtime() -> None:
    """Fault: torch's own cuDNN check sees a runtime of another major, as when LD_LIBRARY_PATH
    brings a system cuDNN in front of the wheel's (torch then raises before reporting a version)."""
    cudnn_module = torch._C._cudnn
    compiled = tuple(cudnn_module.getCompileVersion())
    cudnn_module.getRuntimeVersion = lambda: (compiled[0] - 1, compiled[1], compiled[2])


def _check_versions(found: Findings, ctx: CheckContext) -> Optional[str]:
    if ctx.fault == "runtime-mismatch":
        _pretend_another_runtime()
    try:
        runtime_code = torch.backends.cudnn.version()
    except RuntimeError as err:
        # torch refuses a cuDNN whose major/minor differs from the one it was built with, before we
        # can compare: say what it found and where to look.
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        found.figures["error"] = lines[0] if lines else type(err).__name__
        found.fail(f"torch refuses the cuDNN it loaded ({found.figures['error']}): another cuDNN is being "
                   "picked up; check LD_LIBRARY_PATH and /etc/ld.so.conf.d for one outside the image's wheels")
        return None
    runtime = versions.cudnn_version_string(runtime_code)
    compiled = _version_tuple("getCompileVersion")
    found.figures.update({"runtime": runtime, "compiled": ".".join(map(str, compiled)) if compiled else None,
                          "available": torch.backends.cudnn.is_available()})
    if runtime is None:
        found.fail("cuDNN could not be loaded: torch.backends.cudnn.version() is None")
        return None
    if compiled:
        have, built = versions.parse_version(runtime), compiled
        if have[0] != built[0] or have[:2] < tuple(built[:2]):
            found.fail(f"cuDNN {runtime} is loaded but torch was built with {'.'.join(map(str, built))}: "
                       "incompatible; check LD_LIBRARY_PATH for another cuDNN")
        elif have[:3] != tuple(built[:3]):
            found.warn(f"cuDNN {runtime} is loaded but torch was built with {'.'.join(map(str, built))}")
    promised = ctx.manifest.cudnn if ctx.manifest else None
    if promised and not versions.same_release(promised, runtime):
        found.fail(f"cuDNN {runtime} is loaded but the manifest promises {promised}")
    return runtime


def _conv_case(dtype: Optional[torch.dtype], device: torch.device) -> Tuple[bool, float, str]:
    """conv2d forward and backward on `device` (fp32, or autocast to `dtype`) vs a float64 CPU run."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=generator, dtype=torch.float64)
    weight = torch.randn(16, 3, 3, 3, generator=generator, dtype=torch.float64)
    bias = torch.randn(16, generator=generator, dtype=torch.float64)
    upstream = torch.randn(8, 16, 32, 32, generator=generator, dtype=torch.float64)

    def forward_backward(inputs: List[torch.Tensor], autocast_dtype: Optional[torch.dtype]) -> List[torch.Tensor]:
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        if autocast_dtype is None:
            out = F.conv2d(leaves[0], leaves[1], leaves[2], padding=1)
        else:
            with torch.autocast(device_type="cuda", dtype=autocast_dtype):
                out = F.conv2d(leaves[0], leaves[1], leaves[2], padding=1)
        out.backward(upstream.to(out.device, out.dtype))
        grads = [leaf.grad for leaf in leaves]
        if any(grad is None for grad in grads):
            raise RuntimeError("conv2d backward left an input without a gradient")
        return [out, *(grad for grad in grads if grad is not None)]

    reference = forward_backward([x, weight, bias], None)
    tested = forward_backward([t.to(device, torch.float32) for t in (x, weight, bias)], dtype)
    tolerance = TOLERANCE[dtype or torch.float32]
    worst = 0.0
    for name, got, want in zip(("output", "grad_input", "grad_weight", "grad_bias"), tested, reference):
        same, error = compare(got, want, tolerance)
        if not same:
            return False, error, name
        worst = max(worst, error)
    return True, worst, ""


def run(ctx: CheckContext) -> Outcome:
    if torch.version.cuda is None:
        return ctx.no_gpu(f"no GPU: torch {torch.__version__} is a CPU build, which has no cuDNN")
    found = Findings()
    runtime = _check_versions(found, ctx)
    found.key_figure = f"cuDNN {runtime}" if runtime else "cuDNN ?"
    if runtime is None:  # no usable cuDNN: conv2d would only fail the same way
        return found.outcome("")
    missing = gpu_unusable_reason()
    if missing:
        if found.failed:
            return found.outcome("")
        checked = f"cuDNN {runtime} loads and matches the build; conv2d not run"
        return ctx.no_gpu(f"{missing} ({checked})", found.figures, found.key_figure)

    device = torch.device("cuda", 0)
    cases = [("fp32", None), ("autocast fp16", torch.float16)]
    # torch sends bf16 convolutions to cuDNN only on GPUs with native bf16 (8.0+); below that
    # is_bf16_supported() may still say True (emulation) and the case would not test cuDNN at all.
    if compat.native_bf16(torch.cuda.get_device_capability(device)):
        cases.append(("autocast bf16", torch.bfloat16))
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        for label, dtype in cases:
            ok, error, where = _conv_case(dtype, device)
            found.figures[f"conv_{label.replace(' ', '_')}_rel_error"] = error
            if not ok:
                found.fail(f"conv2d {label} {where} on the GPU differs from the CPU by {error:.2e} "
                           f"(tolerance {TOLERANCE[dtype or torch.float32]:g})")
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    return found.outcome(f"cuDNN {runtime}; conv2d forward+backward matches the CPU in "
                         + ", ".join(label for label, _ in cases))
