"""environment: the versions in this process vs the manifest's promise, and where the libraries came from.

torch is imported inside run(), after the installed packages are compared with the lock: when a
`pip install` replaced an NVIDIA wheel, torch may no longer import at all, and the report must
still name the package that broke it.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from types import ModuleType
from typing import Dict, List, Mapping, Optional, Tuple

from verify import libs, packages, sbom, versions
from verify.context import CheckContext
from verify.errors import root_cause
from verify.manifest import Manifest
from verify.result import Findings, Outcome

# (manifest key, label) in report order; the actual values come from _actual_versions().
_COMPARED = (
    ("python", "Python"),
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("torchaudio", "torchaudio"),
    ("triton", "Triton"),
    ("cuda", "CUDA (torch.version.cuda)"),
    ("cudnn", "cuDNN"),
    ("nccl", "NCCL"),
    ("cuda_runtime", "the CUDA runtime wheel"),
    ("cublas", "the cuBLAS wheel"),
)
_CUDA_ONLY = {"triton", "cuda", "cudnn", "nccl", "cuda_runtime", "cublas"}
# Read from pip metadata, which is missing when torch uses a system CUDA: warn, do not fail.
_FROM_WHEELS = {"cuda_runtime", "cublas"}


def _distribution_version(*names: str) -> Optional[str]:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None



def _cudnn_version(torch: ModuleType) -> Tuple[Optional[str], Optional[str]]:
    """(version, None), or (None, why) when torch refuses the cuDNN it found (a version mismatch)."""
    if torch.version.cuda is None:
        return None, None
    try:
        return versions.cudnn_version_string(torch.backends.cudnn.version()), None
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        return None, lines[0] if lines else "torch.backends.cudnn.version() failed"


def _initialise(torch: ModuleType) -> Optional[str]:
    """Load what a training job loads, so /proc/self/maps shows the libraries really in use.

    Returns why the GPU libraries were not loaded (no GPU, or one this build has no kernels for),
    or None when they were."""
    from verify.checks._common import gpu_unusable_reason  # imports torch: only after torch imported here

    unusable = gpu_unusable_reason()
    if unusable is None:
        a = torch.ones(8, 8, device="cuda")
        (a @ a).sum().item()  # cuBLAS
        torch.nn.functional.conv2d(a.view(1, 1, 8, 8), torch.ones(1, 1, 3, 3, device="cuda")).sum().item()
    return unusable


def _cuda_wheel_version(component: str, cuda_major: Optional[str]) -> Optional[str]:
    """A CUDA library wheel's version: CUDA 12 names it `<component>-cu12`, CUDA 13 `<component>`."""
    if not cuda_major:
        return None
    return _distribution_version(f"{component}-cu{cuda_major}", component)


def _actual_versions(torch: ModuleType, cuda_major: Optional[str], cudnn: Optional[str]) -> Dict[str, Optional[str]]:
    from verify.checks._common import nccl_version

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _distribution_version("torchvision"),
        "torchaudio": _distribution_version("torchaudio"),
        "triton": _distribution_version("triton", "pytorch-triton"),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "nccl": nccl_version(),
        "cuda_runtime": _cuda_wheel_version("nvidia-cuda-runtime", cuda_major),
        "cublas": _cuda_wheel_version("nvidia-cublas", cuda_major),
    }


def _trusted_roots(torch: ModuleType) -> List[str]:
    """Where torch's own libraries live: its package and the nvidia-* wheels' namespace package."""
    roots = [os.path.dirname(torch.__file__ or "")]
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        roots.extend(str(location) for location in spec.submodule_search_locations)
    roots.extend(os.path.join(entry, "nvidia") for entry in sys.path if entry)
    return roots


def _installed_distributions() -> List[str]:
    names = []
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            names.append(name)
    return names


def run(ctx: CheckContext) -> Outcome:
    found = Findings()
    manifest = ctx.manifest
    if manifest is not None and manifest.packages:
        _check_packages(found, manifest.packages)
    try:
        import torch
    except Exception as err:  # a broken install: say so, with what changed above
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        said = f"{type(err).__name__}: {lines[0] if lines else 'no message'}"
        cause = root_cause(err)  # e.g. the library that did not load, under the import that wrapped it
        found.fail(f"torch does not import ({said}{'' if cause.startswith(said) else f'; root cause: {cause}'})")
        return found.outcome("")
    return _compare(ctx, found, torch)


def _compare(ctx: CheckContext, found: Findings, torch: ModuleType) -> Outcome:
    cudnn, cudnn_error = _cudnn_version(torch)
    if cudnn_error:
        found.fail(cudnn_error)
    else:
        not_loaded = _initialise(torch)
        if not_loaded and torch.version.cuda:
            found.figures["gpu_libraries_not_loaded"] = not_loaded
    manifest = ctx.manifest
    cuda_major = (torch.version.cuda or (manifest.cuda if manifest else None) or "").split(".")[0] or None
    actual = _actual_versions(torch, cuda_major, cudnn)
    found.figures["versions"] = actual
    found.figures["manifest"] = manifest.path if manifest else None
    found.figures["lock_digest"] = manifest.lock_digest if manifest else None
    found.key_figure = f"torch {torch.__version__}"
    cpu_build = torch.version.cuda is None

    compared: List[str] = []
    if manifest is not None:
        if cpu_build and manifest.cuda:
            found.fail(f"this image promises CUDA {manifest.cuda} but torch {torch.__version__} is a CPU build")
        for key, label in _COMPARED:
            expected = getattr(manifest, key)
            if not expected or (cpu_build and key in _CUDA_ONLY):
                continue
            have = actual.get(key)
            if have is None:
                message = f"the manifest promises {label} {expected} but it is not installed or cannot be read"
                if key in _FROM_WHEELS:
                    found.warn(message)
                else:
                    found.fail(message)
                continue
            compared.append(key)
            if not versions.same_release(expected, have):
                found.fail(f"{label} is {have} but the manifest promises {expected}")
    found.figures["compared"] = compared
    if cpu_build:
        found.figures["not_applicable"] = "CPU build of torch: CUDA, cuDNN and NCCL versions do not apply"

    _check_libraries(found, torch)
    bom = _report_sbom(found, manifest)
    if manifest is None:
        return found.outcome("no manifest (host run): versions reported, nothing compared")
    tag = f" ({manifest.tag})" if manifest.tag else ""
    if not compared:
        return found.outcome(f"the manifest{tag} states no versions to compare")
    locked = f"; {len(manifest.packages)} CUDA torch packages as locked" if manifest.packages else ""
    return found.outcome(f"{len(compared)} versions match the manifest{tag}: {', '.join(compared)}{locked}{bom}")


def _report_sbom(found: Findings, manifest: Optional[Manifest]) -> str:
    """The image's bill of materials: its digest and package counts; '' on a host or an older image."""
    path = os.path.join(os.path.dirname(manifest.path), os.path.basename(sbom.DEFAULT_PATH)) if manifest else ""
    if not path or not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    counted = sbom.counts(json.loads(text))
    found.figures["sbom"] = {"path": path, "digest": sbom.digest(text), **counted}
    if manifest is not None and manifest.sbom_digest and manifest.sbom_digest != sbom.digest(text):
        found.warn(f"{path} is not the bill of materials the build recorded (digest {sbom.digest(text)}, the "
                   f"manifest says {manifest.sbom_digest}): it was changed after the build")
    return f"; SBOM {counted['debian']} Debian and {counted['python']} Python packages"


def _check_packages(found: Findings, locked: Mapping[str, str]) -> None:
    """Every package of the image's CUDA torch must still be the one the image was built and verified with."""
    differences = packages.changed(locked, packages.installed_versions())
    said = [f"{name} {want} is no longer installed" if have is None else f"{name} is {have}, the image was built "
            f"with {want}" for name, want, have in differences]
    found.figures["packages_checked"] = len(locked)
    found.figures["packages_changed"] = said
    if said:
        shown = "; ".join(said[:6]) + (f"; and {len(said) - 6} more" if len(said) > 6 else "")
        restore = " ".join(f"{name}=={want}" for name, want, _ in differences)
        found.fail(f"the packages of the image's CUDA torch changed after the build (a later pip install?): {shown}. "
                   f"Restore them with `pip install --no-deps {restore}`, or rebuild the image")


def _check_libraries(found: Findings, torch: ModuleType) -> None:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
            loaded = libs.libraries_from_maps(handle.read())
    except OSError:
        loaded = {}
        found.figures["libraries_note"] = "/proc/self/maps is not readable: loaded libraries not inspected"
    found.figures["libraries"] = loaded
    ld_library_path = os.environ.get("LD_LIBRARY_PATH", "")
    found.figures["ld_library_path"] = ld_library_path
    shadowed = libs.shadowed_libraries(loaded, ld_library_path, _trusted_roots(torch))
    found.figures["shadowed"] = [path for path, _ in shadowed]
    if shadowed:
        found.warn(libs.describe_shadowing(shadowed))

    conflicts, by_major = libs.cuda_wheel_conflicts(_installed_distributions())
    found.figures["nvidia_wheels"] = by_major
    for conflict in conflicts:
        found.fail(f"{conflict} are both installed and overwrite each other's files under site-packages/nvidia: "
                   "pip uninstall the one for the CUDA major torch does not use, then reinstall the other")
    if len(by_major) > 1 and not conflicts:
        majors = " and ".join(f"CUDA {major}" for major in by_major)
        found.warn(f"nvidia-* wheels for {majors} are installed together: keep only the major torch uses "
                   f"({torch.version.cuda or 'none: CPU build'})")
