"""The checks verify knows, in report order. Standard library only: the parent never imports torch.

`exclusive` checks run with nothing beside them, because they measure bandwidth or throughput that
a neighbour would skew. The others may overlap (two at a time, one CPU thread each; see
`check_process._one_cpu_thread`), which keeps a full run short. train's images/s is a sanity figure, not a
benchmark: perf is the benchmark.

`gang` checks run in every process of a distributed launch (torchrun, or any launcher that sets
RANK and WORLD_SIZE) at the same moment, so they start first; in distributed mode they are the
only checks run unless --only names others (see cli.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from verify.errors import UsageError


@dataclass(frozen=True)
class CheckSpec:
    name: str
    summary: str
    timeout_s: float = 120.0
    needs_gpu: bool = False  # whether --require-gpu can turn its "no GPU" into a failure
    exclusive: bool = False
    slow: bool = False  # started first, so the quick checks run beside it
    opt_in: bool = False  # runs only when asked for (--perf, or named in --only)
    preload: Tuple[str, ...] = ()  # modules the runner imports once, before forking this check
    gang: bool = False  # runs on every rank of a distributed launch together (see the module docstring)


# torch.compile and every torch.optim optimizer import torch._dynamo on first use: seconds each time.
_DYNAMO = ("torch._dynamo",)

CHECKS: Sequence[CheckSpec] = (
    CheckSpec("environment", "Python, torch, CUDA, cuDNN, NCCL versions vs the manifest; loaded libraries"),
    CheckSpec("driver", "NVIDIA driver version vs the minimum for the image's CUDA", needs_gpu=True),
    CheckSpec("health", "GPU memory repairs, uncorrectable ECC errors, PCIe link, clock slowdowns, persistence "
              "(nvidia-smi -q, like DCGM's level 1)", 60.0, needs_gpu=True),
    CheckSpec("cuda", "devices, arch coverage, a kernel, GPU matmul vs CPU", needs_gpu=True),
    CheckSpec("cudnn", "cuDNN versions; conv2d forward/backward on GPU vs CPU", needs_gpu=True),
    CheckSpec("nccl", "process group all-reduce (NCCL on GPUs, gloo on CPU)", 180.0, needs_gpu=True,
              exclusive=True),
    CheckSpec("shm", "/dev/shm size and a multi-worker DataLoader"),
    CheckSpec("autograd", "gradcheck, exact gradients, stable cross-entropy"),
    CheckSpec("compile", "torch.compile (Inductor) matches eager", 300.0, slow=True, preload=_DYNAMO),
    CheckSpec("toolchain", "devel images: nvcc is torch's CUDA, compiles a kernel (run on a GPU)", 300.0, slow=True),
    CheckSpec("train", "a small CNN learns a synthetic task", preload=_DYNAMO),
    CheckSpec("perf", "matmul TFLOP/s, memory and host-to-device bandwidth", 180.0, needs_gpu=True,
              exclusive=True, opt_in=True),
    CheckSpec("distributed", "every rank of a torchrun/multi-node launch: exact all-reduce, bus bandwidth per "
              "size, slow or missing ranks (distributed mode only)", 180.0, exclusive=True, opt_in=True, gang=True),
)

# Not a check: gathers the report's environment fingerprint, in a child like the checks.
FINGERPRINT = CheckSpec("fingerprint", "environment fingerprint for the report", 60.0)

_BY_NAME: Dict[str, CheckSpec] = {spec.name: spec for spec in CHECKS}
NAMES: Sequence[str] = tuple(_BY_NAME)


def get(name: str) -> CheckSpec:
    if name == FINGERPRINT.name:
        return FINGERPRINT
    return _BY_NAME[name]


def _names(values: Optional[Iterable[str]], flag: str) -> List[str]:
    names = [name.strip() for value in values or () for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in _BY_NAME]
    if unknown:
        raise UsageError(f"{flag}: unknown check {', '.join(repr(n) for n in unknown)} "
                         f"(choose from {', '.join(NAMES)})")
    return names


def select(only: Optional[Iterable[str]], skip: Optional[Iterable[str]], perf: bool,
           distributed: bool = False) -> List[CheckSpec]:
    """The checks to run, in report order. Opt-in checks run when asked for by flag or by name.

    In distributed mode the default is the gang checks alone: N processes per node each running
    every single-process check would only repeat the same answer N times.
    """
    wanted = _names(only, "--only")
    unwanted = set(_names(skip, "--skip"))
    if not distributed and any(_BY_NAME[name].gang for name in wanted):
        raise UsageError("the distributed check runs only under torchrun (or RANK, WORLD_SIZE, MASTER_ADDR, "
                         "MASTER_PORT set by another launcher) or with --distributed")
    chosen = []
    for spec in CHECKS:
        if wanted:
            picked = spec.name in wanted
        elif distributed:
            picked = spec.gang
        else:
            picked = not spec.opt_in or (spec.name == "perf" and perf)
        if picked and spec.name not in unwanted:
            chosen.append(spec)
    if not chosen:
        raise UsageError("no check left to run after --only/--skip")
    return chosen
