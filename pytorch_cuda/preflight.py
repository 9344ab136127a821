"""`build.py --preflight TAG`: can this image use this host's GPUs? Answered before any container starts.

Reads the image's labels (the contract in verify/manifest.py), the host's driver and GPUs
(nvidia-smi, read by verify/nvsmi.py) and how Docker can hand GPUs to a container. The verdicts
are verify's own rules (verify/compat.py), so preflight and `verify` in the image never disagree.
Needs no torch. `evaluate` is pure so each verdict is unit-tested with plain data.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import platform
import shutil
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from verify import compat, nvsmi
from verify import manifest as contract
from verify.manifest import Manifest

from . import matrix, plan, render
from .errors import DockerUnavailable, PytorchCudaError

HOOK = "nvidia-container-runtime-hook"
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")


@dataclass(frozen=True)
class HostFacts:
    driver: Optional[str]  # "550.54.15"; None when no NVIDIA driver answers
    gpus: tuple[nvsmi.SmiGpu, ...]
    docker_runtimes: tuple[str, ...]
    problem: str = ""  # why nvidia-smi gave nothing (or less), when it exists but failed
    hook: Optional[str] = None  # path of nvidia-container-runtime-hook: `docker run --gpus` uses it
    cdi_specs: tuple[str, ...] = ()  # CDI spec files naming nvidia.com/gpu devices
    docker_problem: str = ""  # why the Docker engine could not be asked
    machine: str = ""  # the host's CPU as `uname -m` says it ("x86_64", "aarch64"); "" when not asked


@dataclass(frozen=True)
class Finding:
    status: str  # ok | warn | fail
    message: str


def _driver_finding(image: Manifest, host: HostFacts) -> Finding:
    cuda = image.cuda or "?"
    needed = image.driver_floor or image.toolkit_driver or "?"
    if host.driver is None:
        why = f" ({host.problem})" if host.problem else ""
        return Finding(compat.FAIL, f"no NVIDIA driver on this host{why}: the image runs on the CPU only; "
                                    f"install a driver >= {image.toolkit_driver or needed} for CUDA {cuda}")
    verdict = compat.driver_verdict(host.driver, cuda, image.driver_floor, image.toolkit_driver)
    return Finding(verdict.status, verdict.message)


def _gpu_findings(image: Manifest, host: HostFacts) -> list[Finding]:
    findings = []
    for index, gpu in enumerate(host.gpus):
        verdict = compat.arch_verdict(f"{index} {gpu.name}", compat.parse_capability(gpu.compute_capability),
                                      image.archs)
        message = verdict.message
        if gpu.compute_capability is None and host.problem:
            message += f" ({host.problem})"
        findings.append(Finding(verdict.status, message))
    return findings


def _docker_finding(host: HostFacts) -> Finding:
    """How `docker run --gpus` / Compose device requests would reach the GPUs.

    Docker needs no registered `nvidia` runtime for that: its built-in GPU support runs the NVIDIA
    container toolkit's hook, and CDI specs name the devices directly. preflight sees this host's
    files; the engine (DOCKER_HOST may point elsewhere) may see others, so a miss is a warning.
    """
    if host.docker_problem:
        return Finding(compat.WARN, f"{host.docker_problem}: whether containers get GPUs could not be checked")
    ways = []
    if "nvidia" in host.docker_runtimes:
        ways.append("Docker has the nvidia runtime")
    if host.hook:
        ways.append(f"{HOOK} is installed ({host.hook}): `docker run --gpus all` works")
    if host.cdi_specs:
        ways.append(f"CDI specs for nvidia.com/gpu ({', '.join(host.cdi_specs)}): "
                    "`docker run --device nvidia.com/gpu=all` works")
    if ways:
        return Finding(compat.OK, "; ".join(ways))
    return Finding(compat.WARN, "found no NVIDIA container toolkit (no nvidia runtime in Docker, no "
                                f"{HOOK} on PATH, no CDI spec in {' or '.join(CDI_DIRS)}): `docker run --gpus all` "
                                "fails with 'could not select device driver'; install the NVIDIA Container "
                                "Toolkit (and `nvidia-ctk cdi generate` for CDI)")


def evaluate(image: Optional[Manifest], host: HostFacts, architecture: str = "") -> list[Finding]:
    """Every reason this image would not train on this host's GPUs, in words a user can act on.

    `architecture`: the image's CPU architecture (OCI name, "amd64"), judged against host.machine
    when both are known.
    """
    if image is None:
        return [Finding(compat.FAIL, "this image has no io.pytorch-cuda labels: it was not built by pytorch-cuda")]
    findings = [_driver_finding(image, host), *_gpu_findings(image, host), _docker_finding(host)]
    if architecture and host.machine:
        verdict = compat.platform_verdict(host.machine, architecture)
        findings.append(Finding(verdict.status, verdict.message))
    return findings


def cdi_specs(directories: Iterable[str] = CDI_DIRS) -> tuple[str, ...]:
    """CDI spec files (yaml or json) that declare NVIDIA GPU devices."""
    found = []
    for directory in directories:
        for path in sorted(glob.glob(os.path.join(directory, "*.yaml")) + glob.glob(os.path.join(directory, "*.json"))):
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    if "nvidia.com/gpu" in handle.read():
                        found.append(path)
            except OSError:
                continue
    return tuple(found)


def host_facts(docker_runtimes: tuple[str, ...], cdi_dirs: Iterable[str] = CDI_DIRS,
               which: Callable[[str], Optional[str]] = shutil.which, docker_problem: str = "") -> HostFacts:
    report = nvsmi.query(which=which)
    return HostFacts(report.driver, report.gpus, docker_runtimes, report.problem, which(HOOK), cdi_specs(cdi_dirs),
                     docker_problem, platform.machine())


def judge(ref: str) -> tuple[str, list[Finding]]:
    """(where the image's facts came from, the findings) for image `ref` on this host.

    From the image's labels when it is here; else from the matrix's committed manifest of that tag,
    so a user can ask before pulling 6-10 GB. Docker is asked lazily: without a daemon the GPU and
    driver verdicts still come, and the container finding says what could not be checked.
    """
    from .engine import connect  # the SDK only when preflight runs

    runtimes: tuple[str, ...] = ()
    cdi_dirs: tuple[str, ...] = CDI_DIRS
    docker_problem, labels = "", None
    # A tag judged from the matrix is for the platform its name says (-arm64, else amd64).
    architecture = plan.architecture_of(plan.platform_of_tag(ref))
    try:
        engine = connect(timeout=30)
        runtimes = engine.runtimes()
        cdi_dirs = tuple(dict.fromkeys((*CDI_DIRS, *engine.cdi_spec_dirs())))
        labels = engine.labels(ref)
        architecture = engine.architecture(ref)
    except DockerUnavailable:
        docker_problem = "the Docker daemon cannot be reached (start it, or set DOCKER_HOST)"
    except PytorchCudaError:  # not here: a tag of the matrix can still be judged from its manifest
        pass
    if labels is not None:
        source, image = f"the labels of {ref}", contract.from_labels(labels, ref)
    elif (committed := plan.committed_manifest(ref)) is not None:
        image = Manifest.from_dict(json.loads(committed.read_text()), render.repo_path(committed))
        source = f"{render.repo_path(committed)} ({ref} is not present here)"
        if plan.platform_of_tag(ref) != matrix.AMD64:
            image, source = _on_platform(image, plan.platform_of_tag(ref)), f"{source}, with the archs of {ref}"
    elif docker_problem:
        raise DockerUnavailable(f"{docker_problem}, and {ref} is not a tag of the matrix")
    else:
        raise PytorchCudaError(f"image {ref} is not here and is not a tag of the matrix: build it (build.py) or "
                               "pull it first")
    return source, evaluate(image, host_facts(runtimes, cdi_dirs, docker_problem=docker_problem), architecture)


def _on_platform(image: Manifest, platform: str) -> Manifest:
    """The committed (amd64) promise of a tag as its image for `platform` makes it: that platform's archs."""
    build = matrix.load().resolve(cuda=image.cuda, torch=image.torch)
    return dataclasses.replace(image, archs=tuple(build.on(platform).archs or ()))


def command(ref: str) -> int:
    """`build.py --preflight TAG`: the findings as a table; exit 1 when one fails."""
    from .tables import table

    source, findings = judge(ref)
    print(f"judging {ref} from {source}")
    print(table(["CHECK", "FINDING"], [[f.status, f.message] for f in findings]))
    failed = [f for f in findings if f.status == compat.FAIL]
    print(f"{ref}: " + (f"cannot use this host's GPUs ({len(failed)} problem(s))" if failed
                        else "can use this host's GPUs"))
    return 1 if failed else 0
