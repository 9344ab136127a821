"""Tiny local wheels for the user-package tests: made with zipfile, so no build backend or index is needed.

A wheel is a zip with the package and a .dist-info folder (METADATA, WHEEL, RECORD); pip installs it
from a local path with --no-index, as a user installs a wheel they built or downloaded.
"""
from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = (),
               module: str | None = None) -> Path:
    """A pure-Python wheel `name`-`version` whose module prints nothing and holds VERSION."""
    module = module or name.replace("-", "_")
    dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist_info}/METADATA": ("Metadata-Version: 2.1\n"
                                  f"Name: {name}\nVersion: {version}\n"
                                  + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: pytorch-cuda-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "\n".join(_record_line(path, data) for path, data in files.items()) + f"\n{dist_info}/RECORD,,\n"
    path = directory / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
        archive.writestr(f"{dist_info}/RECORD", record)
    return path
