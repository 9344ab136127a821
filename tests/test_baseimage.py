"""Base images made offline for another architecture: the `docker load` archive's config names it.

That the archive loads and runs as arm64 is shown with the real engine by tests/cuda13/test_arm64.py."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from pytorch_cuda import baseimage


def test_an_arm64_archive_names_its_architecture_and_layer(tmp_path: Path):
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        info = tarfile.TarInfo("etc/debian_version")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"12.0\n"))
    archive = tmp_path / "image.tar"
    baseimage.write_image_archive(rootfs, archive, "arm64v8/debian:bookworm-slim", "arm64")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile(manifest[0]["Config"]))
        layer = tar.extractfile(manifest[0]["Layers"][0]).read()
    assert manifest[0]["RepoTags"] == ["arm64v8/debian:bookworm-slim"]
    assert (config["architecture"], config["os"], config["config"]["Cmd"]) == ("arm64", "linux", ["bash"])
    assert layer == rootfs.read_bytes()
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]


def test_mmdebstrap_is_asked_for_the_architecture(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(baseimage.shutil, "which", lambda name: f"/usr/bin/{name}")
    command = baseimage.bootstrap_command("bookworm", True, baseimage.DEFAULT_MIRROR, tmp_path / "out.tar", [],
                                          architecture="arm64")
    assert command[:4] == ["mmdebstrap", "--variant=minbase", "--quiet", "--architectures=arm64"]
    native = baseimage.bootstrap_command("bookworm", True, baseimage.DEFAULT_MIRROR, tmp_path / "out.tar", [])
    assert not any(part.startswith("--architectures") for part in native)
