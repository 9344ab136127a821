"""The image contract: /etc/pytorch-cuda/manifest.json and the io.pytorch-cuda.* labels, defined once.

The builder writes the manifest and the labels from these definitions (render.py), `verify` reads
the manifest inside the image, and `build.py --preflight` reads the labels without starting a
container. Standard library only: this module ships in every image.

Every key may be missing (or null): a check compares only what the manifest states. A host has no
manifest at all, and then nothing is compared.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Mapping, Optional, Tuple

from verify import userenv
from verify.errors import ManifestError

IMAGE_ETC = userenv.IMAGE_ETC  # where an image keeps its contract (userenv, cheap to import, spells it)
DEFAULT_PATH = userenv.MANIFEST
ENV_VAR = "PYTORCH_CUDA_MANIFEST"
LABEL_PREFIX = "io.pytorch-cuda."


@dataclass(frozen=True)
class Manifest:
    path: str
    tag: Optional[str] = None
    torch: Optional[str] = None
    torchvision: Optional[str] = None
    torchaudio: Optional[str] = None
    triton: Optional[str] = None
    cuda: Optional[str] = None
    cuda_runtime: Optional[str] = None
    cudnn: Optional[str] = None
    nccl: Optional[str] = None
    cublas: Optional[str] = None
    python: Optional[str] = None
    archs: Tuple[str, ...] = ()
    driver_floor: Optional[str] = None  # oldest driver of the CUDA major (minor version compatibility)
    toolkit_driver: Optional[str] = None  # the driver of the CUDA release itself
    toolkit: Optional[str] = None  # the CUDA compiler's version (nvcc), in devel images only
    index: Optional[str] = None  # the wheel index the packages came from
    user: Optional[str] = None
    lock_digest: Optional[str] = None  # sha256 of the lock file the image's packages came from
    sbom_digest: Optional[str] = None  # sha256 of /etc/pytorch-cuda/sbom.cdx.json, written by the build
    # name -> exact version of the packages that make the image's CUDA torch (torch, its companions,
    # triton, every NVIDIA wheel), from the lock: a later `pip install` that replaces one is caught.
    packages: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str) -> Manifest:
        """Validate types; unknown keys are ignored so an older verify reads a newer manifest."""
        if not isinstance(data, Mapping):
            raise ManifestError(path, "top level is not a JSON object")
        values: Dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name == "path" or data.get(spec.name) is None:
                continue
            value = data[spec.name]
            if spec.name == "archs":
                if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                    raise ManifestError(path, f"'archs' must be a list of strings, got {value!r}")
                values["archs"] = tuple(value)
            elif spec.name == "packages":
                if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
                    raise ManifestError(path, f"'packages' must map names to version strings, got {value!r}")
                values["packages"] = dict(value)
            elif isinstance(value, str):
                values[spec.name] = value
            else:
                raise ManifestError(path, f"'{spec.name}' must be a string, got {value!r}")
        return cls(path=path, **values)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["archs"] = list(self.archs)
        data["packages"] = dict(self.packages)
        return data


# Manifest field -> label. The label values are the manifest's (archs space-separated); an image's
# labels let --preflight judge it before any container starts. Old images may still carry
# `io.pytorch-cuda.min-driver`, the toolkit driver under its former name.
LABELS: Mapping[str, str] = {
    "torch": LABEL_PREFIX + "torch",
    "torchvision": LABEL_PREFIX + "torchvision",
    "torchaudio": LABEL_PREFIX + "torchaudio",
    "triton": LABEL_PREFIX + "triton",
    "cuda": LABEL_PREFIX + "cuda",
    "cuda_runtime": LABEL_PREFIX + "cuda-runtime",
    "cudnn": LABEL_PREFIX + "cudnn",
    "nccl": LABEL_PREFIX + "nccl",
    "cublas": LABEL_PREFIX + "cublas",
    "python": LABEL_PREFIX + "python",
    "archs": LABEL_PREFIX + "archs",
    "driver_floor": LABEL_PREFIX + "driver-floor",
    "toolkit_driver": LABEL_PREFIX + "toolkit-driver",
    "toolkit": LABEL_PREFIX + "toolkit",
    "index": LABEL_PREFIX + "wheel-index",
    "lock_digest": LABEL_PREFIX + "lock-digest",
}
VARIANT_LABEL = LABEL_PREFIX + "variant"
# Set after the build, from the SBOM the build wrote (its packages are known only then).
SBOM_LABEL = LABEL_PREFIX + "sbom-digest"
SBOM_PATH = IMAGE_ETC + "/sbom.cdx.json"
_FORMER_LABELS = {"toolkit_driver": LABEL_PREFIX + "min-driver"}


def to_labels(manifest: Manifest) -> Dict[str, str]:
    """The labels an image of this manifest carries ('' for what it does not state)."""
    data = manifest.to_dict()
    labels = {label: str(data.get(name) or "") for name, label in LABELS.items()}
    labels[LABELS["archs"]] = " ".join(manifest.archs)
    return labels


def from_labels(labels: Mapping[str, str], ref: str) -> Optional[Manifest]:
    """The manifest an image's labels state, or None when it carries none of ours."""
    if not labels.get(LABELS["torch"]):
        return None
    values: Dict[str, Any] = {}
    for name, label in LABELS.items():
        value = labels.get(label) or labels.get(_FORMER_LABELS.get(name, ""), "")
        if value:
            values[name] = tuple(value.split()) if name == "archs" else value
    if labels.get(SBOM_LABEL):
        values["sbom_digest"] = labels[SBOM_LABEL]
    return Manifest(path=f"labels of {ref}", **values)


def resolve_path(flag: Optional[str], environ: Mapping[str, str]) -> Tuple[str, bool]:
    """The manifest path and whether the user named it (flag or environment) explicitly."""
    if flag:
        return flag, True
    if environ.get(ENV_VAR):
        return environ[ENV_VAR], True
    return DEFAULT_PATH, False


def load(flag: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> Optional[Manifest]:
    """The manifest, or None on a host without one. A named but missing file is an error."""
    path, explicit = resolve_path(flag, os.environ if environ is None else environ)
    if not os.path.exists(path):
        if explicit:
            raise ManifestError(path, "no such file")
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as err:
        raise ManifestError(path, f"cannot be read: {err.strerror or err}") from err
    except ValueError as err:
        raise ManifestError(path, f"is not valid JSON: {err}") from err
    return Manifest.from_dict(data, path)
