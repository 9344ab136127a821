"""`build.py --preflight TAG`: can this image use this host's GPUs? Answered before any container starts.

Reads the image's labels (the contract in verify/manifest.py), the host's driver and GPUs
(nvidia-smi, read by verify/nvsmi.py) and how Docker can hand GPUs to a container. The verdicts
are verify's own rules (verify/compat.py), so preflight and `verify` in the image never disagree.
Needs no torch, and neither the Docker SDK nor a daemon: without them the driver and GPU verdicts
still come, and one finding says what could not be checked. Without a TAG, the tag judged is the
newest that fits this host (recommend.py); a tag that fails on its driver, GPUs or platform is followed
by that one. `evaluate` is pure so each verdict is unit-tested with plain data.
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
from verify.compat import Verdict  # the one verdict type: a finding is a verdict with what it is about
from verify.manifest import Manifest

from . import matrix, plan, recommend, render
from .errors import DockerUnavailable, NoCompatibleTag, PytorchCudaError

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
    smi_hung: bool = False  # nvidia-smi did not answer in time (nvsmi.SmiReport.hung)


def _driver_finding(image: Manifest, host: HostFacts) -> Verdict:
    cuda = image.cuda or "?"
    needed = image.driver_floor or image.toolkit_driver or "?"
    if host.driver is None:
        why = f" ({host.problem})" if host.problem else ""
        return Verdict(compat.FAIL, f"no NVIDIA driver on this host{why}: the image runs on the CPU only; "
                                    f"install a driver >= {image.toolkit_driver or needed} for CUDA {cuda}", "driver")
    verdict = compat.driver_verdict(host.driver, cuda, image.driver_floor, image.toolkit_driver)
    return dataclasses.replace(verdict, about="driver")


def _gpu_findings(image: Manifest, host: HostFacts) -> list[Verdict]:
    findings = []
    for index, gpu in enumerate(host.gpus):
        verdict = compat.arch_verdict(f"{index} {gpu.name}", compat.parse_capability(gpu.compute_capability),
                                      image.archs)
        message = verdict.message
        if gpu.compute_capability is None and host.problem:
            message += f" ({host.problem})"
        findings.append(dataclasses.replace(verdict, message=message, about="gpu"))
    return findings


def _docker_finding(host: HostFacts) -> Verdict:
    """How `docker run --gpus` / Compose device requests would reach the GPUs.

    Docker needs no registered `nvidia` runtime for that: its built-in GPU support runs the NVIDIA
    container toolkit's hook, and CDI specs name the devices directly. preflight sees this host's
    files; the engine (DOCKER_HOST may point elsewhere) may see others, so a miss is a warning.
    """
    if host.docker_problem:
        return Verdict(compat.WARN, f"{host.docker_problem}: whether containers get GPUs could not be checked",
                       "container")
    ways = []
    if "nvidia" in host.docker_runtimes:
        ways.append("Docker has the nvidia runtime")
    if host.hook:
        ways.append(f"{HOOK} is installed ({host.hook}): `docker run --gpus all` works")
    if host.cdi_specs:
        ways.append(f"CDI specs for nvidia.com/gpu ({', '.join(host.cdi_specs)}): "
                    "`docker run --device nvidia.com/gpu=all` works")
    if ways:
        return Verdict(compat.OK, "; ".join(ways), "container")
    return Verdict(compat.WARN, "found no NVIDIA container toolkit (no nvidia runtime in Docker, no "
                                f"{HOOK} on PATH, no CDI spec in {' or '.join(CDI_DIRS)}): `docker run --gpus all` "
                                "fails with 'could not select device driver'; install the NVIDIA Container "
                                "Toolkit (and `nvidia-ctk cdi generate` for CDI)", "container")


def evaluate(image: Optional[Manifest], host: HostFacts, architecture: str = "") -> list[Verdict]:
    """Every reason this image would not train on this host's GPUs, in words a user can act on.

    `architecture`: the image's CPU architecture (OCI name, "amd64"), judged against host.machine
    when both are known.
    """
    if image is None:
        return [Verdict(compat.FAIL, "this image has no io.pytorch-cuda labels: it was not built by pytorch-cuda",
                        "image")]
    findings = [_driver_finding(image, host), *_gpu_findings(image, host), _docker_finding(host)]
    if architecture and host.machine:
        verdict = compat.platform_verdict(host.machine, architecture)
        findings.append(dataclasses.replace(verdict, about="platform"))
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
               which: Callable[[str], Optional[str]] = shutil.which, docker_problem: str = "",
               report: Optional[nvsmi.SmiReport] = None) -> HostFacts:
    """This host's facts; `report`: nvidia-smi's answer when it was asked already."""
    report = report if report is not None else nvsmi.query(which=which)
    return HostFacts(report.driver, report.gpus, docker_runtimes, report.problem, which(HOOK), cdi_specs(cdi_dirs),
                     docker_problem, platform.machine(), report.hung)


def judge(ref: str, report: Optional[nvsmi.SmiReport] = None) -> tuple[str, list[Verdict], HostFacts]:
    """(where the image's facts came from, the findings, the host's facts) for image `ref` on this host.

    From the image's labels when it is here; else from the matrix's committed manifest of that tag,
    so a user can ask before pulling 6-10 GB. Docker is asked lazily: without the SDK or a daemon the
    GPU and driver verdicts still come, and the container finding says what could not be checked.
    `report`: nvidia-smi's answer when it was asked already.
    """
    runtimes: tuple[str, ...] = ()
    cdi_dirs: tuple[str, ...] = CDI_DIRS
    docker_problem, labels = "", None
    # A tag judged from the matrix is for the platform its name says (-arm64, else amd64).
    architecture = plan.architecture_of(plan.platform_of_tag(ref))
    try:
        from .engine import connect  # the SDK only when preflight runs, and a GPU host may have none
    except ImportError as err:
        docker_problem = f"the Docker SDK for Python cannot be imported ({err}; `pip install docker`)"
    else:
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
        here = "could not be looked for" if docker_problem else "is not present here"
        source = f"{render.repo_path(committed)} ({ref} {here})"
        if plan.platform_of_tag(ref) != matrix.AMD64:
            image, source = _on_platform(image, plan.platform_of_tag(ref)), f"{source}, with the archs of {ref}"
    elif docker_problem:
        raise DockerUnavailable(f"{docker_problem}, and {ref} is not a tag of the matrix")
    else:
        raise PytorchCudaError(f"image {ref} is not here and is not a tag of the matrix: build it (build.py) or "
                               "pull it first")
    host = host_facts(runtimes, cdi_dirs, docker_problem=docker_problem, report=report)
    return source, evaluate(image, host, architecture), host


def _on_platform(image: Manifest, platform: str) -> Manifest:
    """The committed (amd64) promise of a tag as its image for `platform` makes it: that platform's archs."""
    build = matrix.load().resolve(cuda=image.cuda, torch=image.torch)
    return dataclasses.replace(image, archs=tuple(build.on(platform).archs or ()))


def host_platform(machine: str) -> str:
    """The Docker platform of images for a host whose CPU is `machine` (`uname -m`); linux/amd64 when unknown."""
    named = f"linux/{compat.oci_architecture(machine)}" if machine else matrix.AMD64
    return named if named in matrix.PLATFORMS else matrix.AMD64


def _tag_for(choice: recommend.Choice, target: str, variant: str = "runtime") -> str:
    suffix = "" if target == matrix.AMD64 else f"-{plan.architecture_of(target)}"
    return f"{plan.REPOSITORY}:{recommend.stem(choice.build)}-{variant}{suffix}"


def _variant_of(ref: str) -> str:
    """The variant an image reference of ours names ('...-jupyter[-arm64]'); runtime for any other."""
    tag = ref.rsplit(":", 1)[-1].removesuffix(f"-{plan.architecture_of(matrix.ARM64)}")
    return next((variant for variant in plan.VARIANTS if tag.endswith(f"-{variant}")), "runtime")


def instead(host: HostFacts, variant: str = "runtime") -> str:
    """One line: the newest tag that would work on this host, or why none does."""
    target = host_platform(host.machine)
    try:
        choice = recommend.choose(nvsmi.SmiReport(host.driver, host.gpus, host.problem, host.smi_hung),
                                  matrix.load().newest_per_tag(), (target,))
    except NoCompatibleTag as err:
        return f"no tag of the matrix works here either: {err}"
    return f"works here instead: {_tag_for(choice, target, variant)} ({choice.reason})"


def command(ref: Optional[str]) -> int:
    """`build.py --preflight [TAG]`: the findings as a table; exit 1 when one fails.

    Without TAG: the newest tag that fits this host's GPUs and driver is judged (exit 1 when none does,
    or the host has no GPU). A tag that fails on its driver, GPUs or platform is followed by one line
    naming the newest tag that would work here."""
    from .tables import table

    report = None
    if ref is None:
        report = nvsmi.query()
        target = host_platform(platform.machine())
        try:
            choice = recommend.choose(report, matrix.load().newest_per_tag(), (target,))
        except NoCompatibleTag as err:
            print(f"{err}: no tag to judge")
            return 1
        ref = _tag_for(choice, target)
        print(f"for this host: {choice.reason}")
    source, findings, host = judge(ref, report)
    print(f"judging {ref} from {source}")
    print(table(["CHECK", "FINDING"], [[f.status, f.message] for f in findings]))
    failed = [f for f in findings if f.status == compat.FAIL]
    print(f"{ref}: " + (f"cannot use this host's GPUs ({len(failed)} problem(s))" if failed
                        else "can use this host's GPUs"))
    if any(f.about in ("driver", "gpu", "platform") for f in failed):
        print(instead(host, _variant_of(ref)))
    return 1 if failed else 0
