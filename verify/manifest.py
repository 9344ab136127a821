"""The image's promise: /etc/pytorch-cuda/manifest.json, read into one frozen object.

Every key may be missing (or null): a check compares only what the manifest states. A host has no
manifest at all, and then nothing is compared.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Mapping, Optional, Tuple

from verify.errors import ManifestError

DEFAULT_PATH = "/etc/pytorch-cuda/manifest.json"
ENV_VAR = "PYTORCH_CUDA_MANIFEST"


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
    min_driver: Optional[str] = None
    user: Optional[str] = None
    lock_digest: Optional[str] = None  # sha256 of the lock file the image's packages came from

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str) -> "Manifest":
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
            elif isinstance(value, str):
                values[spec.name] = value
            else:
                raise ManifestError(path, f"'{spec.name}' must be a string, got {value!r}")
        return cls(path=path, **values)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["archs"] = list(self.archs)
        return data


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
