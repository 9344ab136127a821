"""NVIDIA's compatibility rules: one implementation for `verify` (in the image) and `build.py --preflight`.

Standard library only, so the builder imports it as it is (verify never imports the builder). Every
verdict is ok, warn or fail with a sentence a user can act on. The rules, with their sources
(README "Compatibility rules"; tests/conformance holds cases written from the same documents):

- Driver (CUDA Compatibility guide, "Minor Version Compatibility"; toolkit release notes, tables
  "CUDA Toolkit and Corresponding Driver Versions" and "... Minimum Required Driver Version for
  CUDA Minor Version Compatibility"): a CUDA X.y user space runs on any driver at or above the
  floor of major X (12.x: 525.60.13, 13.x: 580). Below the floor nothing runs: fail. Between the
  floor and the driver of the X.y release itself, precompiled kernels (cubins: all of torch's) run,
  but PTX newer than the driver cannot be JIT-compiled and APIs newer than the driver return
  cudaErrorCallRequiresNewerDriver: warn, naming that.
- Architecture (CUDA C++ Programming Guide, "Binary Compatibility"): see archs.coverage. A cubin
  runs on its own major at an equal or higher minor; PTX is JIT-compiled for equal or newer GPUs
  (slow first start: warn); nothing covering the GPU: fail.
- Native bf16 needs compute capability 8.0 (Ampere); torch >= 2.3 reports bf16 "supported" on
  older GPUs by emulating it, which is slow and not what a mixed-precision job should use.
- Triton, and so torch.compile on the GPU, needs compute capability 7.0.
- Platform: the NVIDIA container toolkit mounts the host's driver libraries (built for the host's
  CPU) into the container, so only an image of the host's own CPU architecture can load them. An
  amd64 image on an arm64 host (Grace Hopper GH200, Grace Blackwell GB200 and GB10 are arm64)
  runs, if at all, under QEMU emulation with no CUDA: fail.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

from verify import archs, versions

OK, WARN, FAIL = "ok", "warn", "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}

NATIVE_BF16_CAPABILITY = (8, 0)
TRITON_MIN_CAPABILITY = (7, 0)


@dataclass(frozen=True)
class Verdict:
    status: str  # ok | warn | fail
    message: str
    about: str = ""  # what it judges, where a list holds several (preflight: image | driver | gpu | container | platform)


def worst(statuses: Iterable[str]) -> str:
    """fail over warn over ok; ok for none."""
    return max(statuses, key=_RANK.__getitem__, default=OK)


def cuda_major(cuda: str) -> str:
    return cuda.split(".")[0]


def driver_verdict(driver: str, cuda: str, floor: Optional[str], toolkit_driver: Optional[str]) -> Verdict:
    """Whether driver `driver` runs an image built for CUDA `cuda`.

    `floor` is the oldest driver of the CUDA major (minor version compatibility) and
    `toolkit_driver` the driver of the CUDA release itself; both come from the image's manifest or
    labels. An image that states no floor is judged by its toolkit driver alone, as strictly as
    before floors were recorded.
    """
    major = cuda_major(cuda)
    if toolkit_driver and not floor:
        floor = toolkit_driver
    if floor and not versions.at_least(driver, floor):
        upgrade = f"upgrade the NVIDIA driver to >= {toolkit_driver or floor}"
        return Verdict(FAIL, f"driver {driver} is older than {floor}, the oldest driver that runs CUDA {major}.x "
                             f"(this image is CUDA {cuda}): CUDA cannot start; {upgrade}, or use a tag built for an "
                             f"older CUDA major")
    if toolkit_driver and not versions.at_least(driver, toolkit_driver):
        return Verdict(WARN, f"driver {driver} runs CUDA {cuda} only through minor version compatibility (>= {floor}); "
                             f"CUDA {cuda}'s own driver is {toolkit_driver}: the image's precompiled kernels work, but "
                             f"PTX newer than the driver cannot be JIT-compiled (extensions or kernels built with a "
                             f"newer nvcc that ship only PTX) and CUDA APIs newer than the driver fail with "
                             f"cudaErrorCallRequiresNewerDriver; upgrade to >= {toolkit_driver} for full support")
    if toolkit_driver:
        return Verdict(OK, f"driver {driver} >= {toolkit_driver}, the driver of CUDA {cuda}")
    return Verdict(OK, f"driver {driver}: the image states no driver requirement for CUDA {cuda}")


def parse_capability(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """'8.9' -> (8, 9); None for what nvidia-smi prints when it cannot say ('[N/A]', '', None)."""
    if not text:
        return None
    major, _, minor = text.strip().partition(".")
    if not (major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def arch_verdict(name: str, capability: Optional[Tuple[int, int]], arch_list: Iterable[str]) -> Verdict:
    """Whether the compiled architectures `arch_list` give GPU `name` of `capability` kernels."""
    arch_list = list(arch_list)
    if capability is None:
        return Verdict(WARN, f"GPU {name}: compute capability unknown, so whether this image has kernels for it "
                             f"cannot be told (compiled for {' '.join(arch_list) or 'nothing stated'})")
    sm = archs.sm_name(*capability)
    if not arch_list:
        return Verdict(WARN, f"GPU {name} ({sm}): the image states no compiled architectures to compare with")
    cover = archs.coverage(capability[0], capability[1], arch_list)
    if cover.how in ("native", "compatible"):
        return Verdict(OK, f"GPU {name} ({sm}): {cover.describe(sm)}")
    if cover.how == "ptx":
        return Verdict(WARN, f"GPU {name} ({sm}): no cubin; {cover.describe(sm)}, a slow first start (cached after)")
    return Verdict(FAIL, f"GPU {name} ({sm}) is not covered by the compiled architectures ({' '.join(arch_list)}): "
                         f"torch would fail with 'no kernel image is available for execution on the device'; use a "
                         f"tag whose archs include {sm} or an sm_{capability[0]}x below it")


# `uname -m` (Python's platform.machine()) to the architecture name of OCI images and Docker.
_OCI_ARCHITECTURE = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def oci_architecture(machine: str) -> str:
    """'x86_64' -> 'amd64', 'aarch64' -> 'arm64'; other names are returned as they are."""
    return _OCI_ARCHITECTURE.get(machine.lower(), machine.lower())


def platform_verdict(host_machine: str, image_architecture: str) -> Verdict:
    """Whether an image built for `image_architecture` (OCI name) can use the GPUs of a host whose
    CPU is `host_machine` (`uname -m`)."""
    host = oci_architecture(host_machine)
    image = oci_architecture(image_architecture)
    if host == image:
        return Verdict(OK, f"the image is linux/{image}, like this host ({host_machine})")
    return Verdict(FAIL, f"the image is linux/{image} but this host is {host_machine} (linux/{host}): it could "
                         f"run only under emulation, where the host's NVIDIA driver libraries (built for "
                         f"{host_machine}) cannot be loaded, so CUDA is not available; use an image built for "
                         f"linux/{host}")


def native_bf16(capability: Tuple[int, int]) -> bool:
    """bf16 in hardware (Ampere, 8.0, and newer); below it torch may only emulate it."""
    return tuple(capability) >= NATIVE_BF16_CAPABILITY


def mixed_precision(capability: Tuple[int, int]) -> Tuple[str, bool]:
    """(autocast dtype name, whether a GradScaler is needed) for training on this GPU."""
    return ("bfloat16", False) if native_bf16(capability) else ("float16", True)


def triton_supported(capability: Tuple[int, int]) -> bool:
    """Triton (torch.compile's GPU back end) compiles for compute capability 7.0 and newer."""
    return tuple(capability) >= TRITON_MIN_CAPABILITY


def require_cuda(cuda: str) -> str:
    """NVIDIA_REQUIRE_CUDA for an image of CUDA `cuda`: any driver of its major (the floor).

    The container toolkit compares against the newest CUDA the driver supports; every driver at
    or above the major's floor supports X.0, so 'cuda>=X.0' refuses exactly the drivers below it.
    """
    return f"cuda>={cuda_major(cuda)}.0"
