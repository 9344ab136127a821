"""Which tag of the matrix fits this host: `build.py --cuda auto`, `build.py --preflight` without a tag.

`choose` is pure: the host's driver and GPUs (as nvidia-smi reports them) and the matrix's entries in,
the chosen entry and one line of why out. It judges with verify's own rules (verify/compat.py:
`driver_verdict`, and `arch_verdict` on archs.coverage), so preflight never calls the chosen tag's
GPUs uncovered or its driver too old. The rule:

- every GPU must be covered by the entry's compiled archs (a cubin of its major at an equal or lower
  minor, or PTX at or below its capability), on every platform asked;
- the driver must meet the entry's floor (minor version compatibility);
- of those, an entry the driver fully supports (at or above its CUDA release's own driver) beats one it
  runs only through minor version compatibility (a warning in preflight), and then the newest wins
  (torch, then CUDA).

Needs no Docker and no torch; the only reading of the host is `nvsmi.query` in `for_this_host`.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from verify import archs, compat, nvsmi, versions

from .errors import NoCompatibleTag
from .matrix import AMD64, MatrixEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    build: MatrixEntry
    status: str  # ok, or warn: the driver runs it only through minor version compatibility, or PTX only
    reason: str  # one line: the host, the tag, and what ruled newer tags out


@dataclass(frozen=True)
class _Judged:
    build: MatrixEntry
    driver: compat.Verdict
    uncovered: tuple[str, ...]  # sm names of GPUs the archs do not cover (on some platform asked)
    ptx_only: tuple[str, ...]  # sm names covered only by PTX (JIT on first start)
    no_archs: bool  # the entry states no compiled archs (on some platform asked): cannot be judged

    @property
    def status(self) -> str:
        if self.uncovered or self.no_archs:
            return compat.FAIL
        return compat.worst([self.driver.status, compat.WARN if self.ptx_only else compat.OK])


def stem(build: MatrixEntry) -> str:
    """'2.7.1-cuda12.6': the part of a tag that names the build (plan.ImageSpec.stem, default Python)."""
    return f"{build.torch}-cuda{build.cuda}"


def newest_first(builds: Iterable[MatrixEntry]) -> list[MatrixEntry]:
    return sorted(builds, key=lambda b: (versions.parse_version(b.torch), versions.parse_version(b.cuda)),
                  reverse=True)


def describe_host(host: nvsmi.SmiReport, platforms: Sequence[str] = (AMD64,)) -> str:
    """'2x NVIDIA H100 80GB HBM3 (sm_90) on driver 580.95.05'."""
    counts = Counter((gpu.name, _sm(gpu)) for gpu in host.gpus)
    gpus = " + ".join(f"{n}x {name} ({sm})" if n > 1 else f"{name} ({sm})" for (name, sm), n in counts.items())
    where = "" if tuple(platforms) == (AMD64,) else f" ({', '.join(platforms)} images)"
    return f"{gpus} on driver {host.driver}{where}"


def _sm(gpu: nvsmi.SmiGpu) -> str:
    capability = compat.parse_capability(gpu.compute_capability)
    return archs.sm_name(*capability) if capability else "compute capability unknown"


def _judge(build: MatrixEntry, driver: str, gpus: Sequence[tuple[str, tuple[int, int]]],
           platforms: Sequence[str]) -> _Judged:
    uncovered: list[str] = []
    ptx_only: list[str] = []
    no_archs = False
    for platform in platforms:
        compiled = build.on(platform).archs
        if not compiled:
            no_archs = True
            continue
        for name, capability in gpus:
            sm = archs.sm_name(*capability)
            status = compat.arch_verdict(name, capability, compiled).status
            if status == compat.FAIL and sm not in uncovered:
                uncovered.append(sm)
            elif status == compat.WARN and sm not in ptx_only:
                ptx_only.append(sm)
    return _Judged(build, compat.driver_verdict(driver, build.cuda, build.driver_floor, build.toolkit_driver),
                   tuple(uncovered), tuple(ptx_only), no_archs)


def _span(group: Sequence[_Judged]) -> str:
    """'2.8.0-cuda12.8 to 2.15.0-cuda13.2' for a run of entries, oldest to newest."""
    first, last = stem(group[0].build), stem(group[-1].build)
    return first if first == last else f"{first} to {last}"


def _why_not(judged: _Judged) -> tuple[str, str]:
    """(group key, words) for why an entry newer than the chosen one was not chosen.

    The archs first: a driver upgrade does not give a GPU kernels."""
    if judged.no_archs:
        return "no-archs", "state no compiled archs, so cannot be judged"
    if judged.uncovered:
        sms = " ".join(judged.uncovered)
        return f"arch {sms}", f"have no kernels for {sms}"
    if judged.driver.status == compat.FAIL:
        return f"floor {judged.build.driver_floor}", f"need driver >= {judged.build.driver_floor}"
    if judged.driver.status == compat.WARN:
        return "minor", "run on this driver only through minor version compatibility"
    return "ptx", f"have only PTX for {' '.join(judged.ptx_only)}"


def _newer_tags(newer: Sequence[_Judged]) -> str:
    """'2.7.0-cuda12.6 to 2.10.0-cuda12.8 run on this driver only ... ; 2.11.0-cuda13.0 to ... need driver >= 580'."""
    groups: list[tuple[str, str, list[_Judged]]] = []
    for judged in newer:  # oldest first
        key, words = _why_not(judged)
        if groups and groups[-1][0] == key:
            groups[-1][2].append(judged)
        else:
            groups.append((key, words, [judged]))
    parts = []
    for key, words, group in groups:
        if key == "minor":  # which driver gives each CUDA release full support
            wants = dict.fromkeys(f"CUDA {j.build.cuda} wants {j.build.toolkit_driver}" for j in group)
            words += f" ({', '.join(wants)})"
        parts.append(f"{_span(group)} {words}")
    return "; ".join(parts)


def choose(host: nvsmi.SmiReport, builds: Iterable[MatrixEntry], platforms: Sequence[str] = (AMD64,)) -> Choice:
    """The newest entry of `builds` whose archs cover every GPU of `host` and whose driver floor its
    driver meets, one it fully supports before one it runs through minor version compatibility.

    `builds`: one entry per tag (Matrix.newest_per_tag). `platforms`: the Docker platforms the tag is
    for; every one's archs must cover every GPU. Raises NoCompatibleTag, in one line, when the host has
    no GPU, a GPU whose compute capability nvidia-smi cannot tell, or no entry fits.
    """
    if not host.gpus:
        if host.hung:  # a GPU may well be there: its driver is what does not respond
            raise NoCompatibleTag(f"cannot read this host's GPUs: {host.problem}")
        raise NoCompatibleTag(f"no NVIDIA GPU found on this host ({host.problem or 'nvidia-smi lists none'})")
    gpus: list[tuple[str, tuple[int, int]]] = []
    for index, gpu in enumerate(host.gpus):
        capability = compat.parse_capability(gpu.compute_capability)
        if capability is None:
            why = f" ({host.problem})" if host.problem else ""
            raise NoCompatibleTag(f"the compute capability of GPU {index} {gpu.name} is unknown{why}, so which "
                                  "tags have kernels for it cannot be told")
        gpus.append((f"{index} {gpu.name}", capability))
    if host.driver is None:
        raise NoCompatibleTag(f"nvidia-smi lists GPUs but no driver version{f' ({host.problem})' if host.problem else ''}")
    everyone = describe_host(host, platforms)
    builds = [build for build in builds if all(platform in build.platforms for platform in platforms)]
    if not builds:
        raise NoCompatibleTag(f"no tag of the matrix has CUDA wheels for {', '.join(platforms)}")
    sms = " ".join(dict.fromkeys(archs.sm_name(*capability) for _, capability in gpus))
    judged = [_judge(build, host.driver, gpus, platforms) for build in newest_first(builds)]
    fitting = [j for j in judged if j.status != compat.FAIL]
    if not fitting:
        raise NoCompatibleTag(f"{everyone}: {_nothing_fits(judged, sms, platforms)}")
    # The newest of the best status: judged is newest first and min() keeps the first of equals.
    best = min(fitting, key=lambda j: j.status != compat.OK)
    support = "full support from this driver" if best.driver.status == compat.OK else "a driver floor this driver meets"
    reason = f"{everyone}: newest tag with kernels for {sms} and {support} is {stem(best.build)}"
    if best.driver.status == compat.WARN:
        reason += (f" (through minor version compatibility: CUDA {best.build.cuda}'s own driver is "
                   f"{best.build.toolkit_driver})")
    if best.ptx_only:
        reason += f" (only PTX for {' '.join(best.ptx_only)}: JIT-compiled on first start)"
    newer = list(reversed(judged[:judged.index(best)]))
    if newer:
        reason += f"; newer tags: {_newer_tags(newer)}"
    log.debug("chose %s for %s", stem(best.build), everyone)
    return Choice(best.build, best.status, reason)


def _nothing_fits(judged: Sequence[_Judged], sms: str, platforms: Sequence[str]) -> str:
    covering = [j for j in judged if not (j.uncovered or j.no_archs)]
    if not covering:
        missing = sorted({sm for j in judged for sm in j.uncovered}, key=_capability)
        if not missing:
            return "no tag of the matrix states its compiled archs, so none can be chosen"
        if len(missing) == 1:
            compiled = {arch for j in judged for p in platforms for arch in j.build.on(p).archs or ()}
            cubins = sorted((a for a in compiled if a.startswith("sm_")), key=_capability)
            known = f"the tags' cubins run from {cubins[0]} to {cubins[-1]}" if cubins else "no tag states its archs"
            return f"no tag of the matrix has kernels for {missing[0]} ({known}): no image of this project can use it"
        each = []
        for sm in missing:
            having = [j for j in judged if not j.no_archs and sm not in j.uncovered]
            each.append(f"{sm}: newest {stem(having[0].build)}" if having else f"{sm}: none")
        return (f"no tag of the matrix has kernels for {' and '.join(missing)} together ({'; '.join(each)}): "
                "no one image of this project can use all these GPUs")
    floor = min((j.build.driver_floor for j in covering), key=versions.parse_version)
    oldest = [j for j in covering if j.build.driver_floor == floor]
    return (f"no tag runs on this driver: the oldest driver floor of the tags with kernels for {sms} is {floor} "
            f"({_span(list(reversed(oldest)))}); upgrade the NVIDIA driver to >= {floor}")


def _capability(arch: str) -> int:
    """'sm_120' -> 120, for ordering."""
    return archs.parse_arch(arch).capability


def for_this_host(builds: Iterable[MatrixEntry], platforms: Sequence[str] = (AMD64,),
                  report: Optional[nvsmi.SmiReport] = None) -> Choice:
    """`choose` for this host's GPUs and driver, read by nvidia-smi (unless `report` was read already)."""
    return choose(report if report is not None else nvsmi.query(), builds, platforms)
