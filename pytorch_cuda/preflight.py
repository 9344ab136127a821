"""`build.py --preflight TAG`: can this image use this host's GPUs? Answered before any container starts.

Reads the image's labels and the host's driver and GPUs (nvidia-smi), and the Docker engine's
runtimes. Needs no torch. `evaluate` is pure so each verdict is unit-tested with plain data.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "9.0"


@dataclass(frozen=True)
class HostFacts:
    driver: str | None  # "550.54.15"; None when no NVIDIA driver answers
    gpus: tuple[Gpu, ...]
    docker_runtimes: tuple[str, ...]
    problem: str = ""  # why nvidia-smi gave nothing, when it exists but failed


@dataclass(frozen=True)
class Finding:
    status: str  # ok | warn | fail
    message: str


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.replace("-", ".").split(".") if part.isdigit())


def arch_support(compute_capability: str, archs: list[str]) -> str:
    """'native' when sm_XY is compiled in, 'ptx' when a compute_XY at or below it can be JIT-compiled, else 'none'."""
    major, minor = compute_capability.split(".")
    device = int(major) * 10 + int(minor)
    if f"sm_{device}" in archs:
        return "native"
    ptx = [int(a.split("_")[1]) for a in archs if a.startswith("compute_") and a.split("_")[1].isdigit()]
    # PTX runs on newer GPUs of any major at or above its own.
    if any(p <= device for p in ptx):
        return "ptx"
    return "none"


def evaluate(labels: dict[str, str], host: HostFacts) -> list[Finding]:
    """Every reason this image would not train on this host's GPUs, in words a user can act on."""
    findings: list[Finding] = []
    cuda = labels.get("io.pytorch-cuda.cuda", "?")
    min_driver = labels.get("io.pytorch-cuda.min-driver", "")
    archs = labels.get("io.pytorch-cuda.archs", "").split()
    if not labels.get("io.pytorch-cuda.torch"):
        return [Finding("fail", "this image has no io.pytorch-cuda labels: it was not built by pytorch-cuda")]

    if host.driver is None:
        why = f" ({host.problem})" if host.problem else ""
        findings.append(Finding("fail", f"no NVIDIA driver on this host{why}: the image runs on the CPU only; "
                                        f"install a driver >= {min_driver} for CUDA {cuda}"))
    elif min_driver and _numbers(host.driver) < _numbers(min_driver):
        findings.append(Finding("fail", f"driver {host.driver} is older than {min_driver}, the minimum for CUDA {cuda}: "
                                        f"upgrade the NVIDIA driver, or use a tag built for an older CUDA"))
    else:
        findings.append(Finding("ok", f"driver {host.driver} >= {min_driver} (CUDA {cuda})"))

    for index, gpu in enumerate(host.gpus):
        support = arch_support(gpu.compute_capability, archs) if archs else "unknown"
        sm = "sm_" + gpu.compute_capability.replace(".", "")
        if support == "native":
            findings.append(Finding("ok", f"GPU {index} {gpu.name} ({sm}) has kernels compiled in"))
        elif support == "ptx":
            findings.append(Finding("warn", f"GPU {index} {gpu.name} ({sm}) has no compiled kernels; PTX will be "
                                            f"JIT-compiled at first use (slow start)"))
        elif support == "none":
            findings.append(Finding("fail", f"GPU {index} {gpu.name} ({sm}) is not among the compiled architectures "
                                            f"({' '.join(archs)}): torch would fail with 'no kernel image is available'; "
                                            f"use a tag whose archs include {sm}"))

    if "nvidia" not in host.docker_runtimes:
        findings.append(Finding("fail" if host.gpus else "warn",
                                "Docker has no nvidia runtime: install the NVIDIA Container Toolkit and run "
                                "`nvidia-ctk runtime configure --runtime=docker`, so `docker run --gpus all` works"))
    else:
        findings.append(Finding("ok", "Docker has the nvidia runtime"))
    return findings


def parse_nvidia_smi(text: str) -> tuple[str | None, tuple[Gpu, ...]]:
    """Parse `nvidia-smi --query-gpu=driver_version,name,compute_cap --format=csv,noheader`."""
    driver, gpus = None, []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            driver = parts[0]
            gpus.append(Gpu(name=parts[1], compute_capability=parts[2]))
    return driver, tuple(gpus)


def host_facts(docker_runtimes: tuple[str, ...]) -> HostFacts:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return HostFacts(None, (), docker_runtimes, "nvidia-smi not found")
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version,name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return HostFacts(None, (), docker_runtimes, f"nvidia-smi failed: {err}")
    if out.returncode != 0:
        reason = (out.stderr or out.stdout).strip().splitlines()
        return HostFacts(None, (), docker_runtimes, f"nvidia-smi: {reason[0] if reason else 'exit ' + str(out.returncode)}")
    driver, gpus = parse_nvidia_smi(out.stdout)
    return HostFacts(driver, gpus, docker_runtimes)
