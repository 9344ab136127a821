"""Base images for air-gapped sites: use the local one, else pull, else make it from Debian packages.

A Debian base image is a minbase root filesystem; mmdebstrap (or debootstrap) makes the same from
a Debian mirror, which offline clusters usually carry, and `docker import` names it as a user would
pull it, so the rendered Dockerfiles need no change.

Another architecture's base (arm64 on an x86_64 builder) comes from Debian's packages for that
architecture, installed through QEMU user emulation, and goes in with `docker load` of an image
archive whose config names the architecture: `docker import` records the daemon's own one.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import hostlock, refs
from .errors import BaseImageError

if TYPE_CHECKING:  # the engine is handed in: this module needs no Docker SDK
    from .engine import Engine

DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The tag of debian:<suite>[-slim], also under a registry or namespace prefix (a site's own mirror).
_DEBIAN_TAG = re.compile(r"^(?P<suite>[a-z]+)(?P<slim>-slim)?$")
# What Debian's own -slim images leave out.
SLIM_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)


# apt settings of Debian's container images: nothing cached after an install, no translations.
APT_CONFIG = {
    "docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    ),
    "docker-no-languages": 'Acquire::Languages "none";\n',
    "docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "docker-autoremove-suggests": 'APT::AutoRemove::SuggestsImportant "false";\n',
}


def write_apt_config(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in APT_CONFIG.items():
        (directory / name).write_text(text)
        written.append(directory / name)
    return written


def debian_suite(image: str) -> str | None:
    """'debian:bookworm-slim' -> 'bookworm'; None for images we cannot make."""
    match = _DEBIAN_TAG.match(refs.tag_of(image)) if refs.repository_name(image) == "debian" else None
    return match.group("suite") if match else None


def security_mirror(mirror: str) -> str:
    """Debian's security suite lives beside the archive: .../debian -> .../debian-security."""
    return mirror.rstrip("/") + "-security" if mirror.rstrip("/").endswith("/debian") else mirror


def debian_sources(suite: str, mirror: str) -> str:
    """/etc/apt/sources.list.d/debian.sources as Debian's own images have it: main, updates and security."""
    return (f"Types: deb\nURIs: {mirror.rstrip('/')}\nSuites: {suite} {suite}-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            f"Types: deb\nURIs: {security_mirror(mirror)}\nSuites: {suite}-security\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")


def bootstrap_command(suite: str, slim: bool, mirror: str, output: Path, apt_config: list[Path],
                      sources: Path | None = None, architecture: str | None = None) -> list[str]:
    """The command that writes a minbase root filesystem tarball for `suite` to `output`.

    mmdebstrap installs from the three suites at once, so the base starts with the security fixes
    of the day; `sources` (debian.sources) replaces the one-line sources.list it leaves.
    """
    if shutil.which("mmdebstrap"):
        command = ["mmdebstrap", "--variant=minbase", "--quiet"]
        if architecture is not None:
            command.append(f"--architectures={architecture}")
        if slim:
            command += [f"--dpkgopt={opt}" for opt in SLIM_EXCLUDES]
        command += [f"--customize-hook=copy-in {path} /etc/apt/apt.conf.d" for path in apt_config]
        if sources is not None:
            command += [f"--customize-hook=copy-in {sources} /etc/apt/sources.list.d",
                        "--customize-hook=rm -f \"$1\"/etc/apt/sources.list"]
        # apt's package lists and caches are not part of a Debian base image.
        command += ["--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin",
                    suite, str(output), f"deb {mirror} {suite} main", f"deb {mirror} {suite}-updates main",
                    f"deb {security_mirror(mirror)} {suite}-security main"]
        return command
    if architecture is not None:
        raise BaseImageError(f"making a {architecture} base image needs mmdebstrap: apt-get install mmdebstrap "
                             "qemu-user-static arch-test")
    if shutil.which("debootstrap"):
        # debootstrap writes a directory; the caller tars it.
        return ["debootstrap", "--variant=minbase", suite, str(output), mirror]
    raise BaseImageError(
        "cannot make a base image offline: install mmdebstrap or debootstrap (apt-get install mmdebstrap), "
        "or `docker load` the base image"
    )


def make_debian_image(
    engine: Engine, image: str, mirror: str = DEFAULT_MIRROR, say: Callable[[str], None] = print,
    architecture: str | None = None,
) -> None:
    """Make `image` (debian:<suite>[-slim]) from Debian packages and import it under that name.

    `architecture` ("arm64"): Debian's packages for another architecture than the daemon's.
    """
    suite = debian_suite(image)
    if suite is None:
        raise BaseImageError(
            f"base image {image} is not here and cannot be pulled, and only debian:<suite>[-slim] "
            f"images can be made offline: `docker load` it, or pass --base debian:bookworm-slim"
        )
    slim = image.endswith("-slim")
    with tempfile.TemporaryDirectory(prefix="pytorch-cuda-base-") as tmp:
        target = Path(tmp) / "rootfs.tar"
        apt_config = write_apt_config(Path(tmp) / "apt.conf.d")
        sources = Path(tmp) / "debian.sources"
        sources.write_text(debian_sources(suite, mirror))
        command = bootstrap_command(suite, slim, mirror, target, apt_config, sources, architecture)
        say(f"making {image} from Debian packages ({command[0]} {suite}{' ' + architecture if architecture else ''}, "
            f"{mirror})")
        if command[0] == "debootstrap":
            rootfs = Path(tmp) / "rootfs"
            command[-2] = str(rootfs)
            _run(command, image)
            write_apt_config(rootfs / "etc/apt/apt.conf.d")
            (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
            (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(debian_sources(suite, mirror))
            shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
            _run(["tar", "-C", str(rootfs), "-cf", str(target), "."], image)
        else:
            _run(command, image)
        if architecture is None:
            engine.import_rootfs(str(target), image)
        else:
            archive = Path(tmp) / "image.tar"
            write_image_archive(target, archive, image, architecture)
            engine.load_archive(str(archive))
    if not engine.exists(image):
        raise BaseImageError(f"imported {image} but the daemon does not list it")


def image_config(layer_digest: str, architecture: str) -> dict[str, object]:
    """The config of a one-layer image for linux/`architecture`, with Debian's CMD and no creation
    time (the same root filesystem gives the same image ID)."""
    return {
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["bash"],
                   "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "pytorch-cuda: Debian packages (mmdebstrap), no registry"}],
    }


def write_image_archive(rootfs_tar: Path, archive: Path, reference: str, architecture: str) -> None:
    """A `docker load` archive of `rootfs_tar` as the one layer of `reference` for `architecture`."""
    digest = hashlib.sha256()
    with open(rootfs_tar, "rb") as layer:
        for block in iter(lambda: layer.read(1 << 20), b""):
            digest.update(block)
    config = json.dumps(image_config(f"sha256:{digest.hexdigest()}", architecture), sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [reference], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs_tar, arcname="layer.tar")
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _run(command: list[str], image: str) -> None:
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        last = (result.stdout.strip().splitlines() or ["no output"])[-1]
        raise BaseImageError(f"making {image} with {command[0]} failed (exit {result.returncode}): {last}")


def ensure_base_image(
    engine: Engine,
    image: str,
    make: bool = False,
    mirror: str = DEFAULT_MIRROR,
    say: Callable[[str], None] = print,
    architecture: str | None = None,
) -> str:
    """Have `image` locally; returns how: 'local', 'pulled' or 'made'.

    `make=True` builds it from Debian packages even when a copy exists (--bootstrap-base).
    `architecture`: the image must be for it ("arm64"); a local copy for another one does not count.
    """
    if not make and engine.exists(image) and (architecture is None or engine.architecture(image) == architecture):
        return "local"
    # Two build.py started together must not both make (or pull) the same image: the second waits,
    # then finds it (unless it was asked to make it anew).
    with hostlock.held(f"base-{image}-{architecture or 'native'}"):
        if not make and engine.exists(image) and (architecture is None or engine.architecture(image) == architecture):
            return "local"
        return _pull_or_make(engine, image, make, mirror, say, architecture)


def _pull_or_make(engine: Engine, image: str, make: bool, mirror: str, say: Callable[[str], None],
                  architecture: str | None) -> str:
    if not make:
        reason = engine.pull(image)
        if reason is None and (architecture is None or engine.architecture(image) == architecture):
            return "pulled"
        say(f"could not pull {image} ({reason or 'another architecture came back'}); making it locally instead")
    make_debian_image(engine, image, mirror, say, architecture)
    return "made"
