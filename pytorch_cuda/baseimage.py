"""Base images for air-gapped sites: use the local one, else pull, else make it from Debian packages.

A Debian base image is a minbase root filesystem; mmdebstrap (or debootstrap) makes the same from
a Debian mirror, which offline clusters usually carry, and `docker import` names it as a user would
pull it, so the rendered Dockerfiles need no change.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import refs
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
                      sources: Path | None = None) -> list[str]:
    """The command that writes a minbase root filesystem tarball for `suite` to `output`.

    mmdebstrap installs from the three suites at once, so the base starts with the security fixes
    of the day; `sources` (debian.sources) replaces the one-line sources.list it leaves.
    """
    if shutil.which("mmdebstrap"):
        command = ["mmdebstrap", "--variant=minbase", "--quiet"]
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
    if shutil.which("debootstrap"):
        # debootstrap writes a directory; the caller tars it.
        return ["debootstrap", "--variant=minbase", suite, str(output), mirror]
    raise BaseImageError(
        "cannot make a base image offline: install mmdebstrap or debootstrap (apt-get install mmdebstrap), "
        "or `docker load` the base image"
    )


def make_debian_image(
    engine: Engine, image: str, mirror: str = DEFAULT_MIRROR, say: Callable[[str], None] = print
) -> None:
    """Make `image` (debian:<suite>[-slim]) from Debian packages and import it under that name."""
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
        command = bootstrap_command(suite, slim, mirror, target, apt_config, sources)
        say(f"making {image} from Debian packages ({command[0]} {suite}, {mirror})")
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
        engine.import_rootfs(str(target), image)
    if not engine.exists(image):
        raise BaseImageError(f"imported {image} but the daemon does not list it")


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
) -> str:
    """Have `image` locally; returns how: 'local', 'pulled' or 'made'.

    `make=True` builds it from Debian packages even when a copy exists (--bootstrap-base).
    """
    if not make and engine.exists(image):
        return "local"
    if not make:
        reason = engine.pull(image)
        if reason is None:
            return "pulled"
        say(f"could not pull {image} ({reason}); making it locally instead")
    make_debian_image(engine, image, mirror, say)
    return "made"
