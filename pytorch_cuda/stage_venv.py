"""Lay a built venv out as component trees with deterministic content, one tree per image layer.

Runs inside the builder stage of every runtime image, under the venv's own Python: standard library
only, and it imports nothing of pytorch_cuda. The final stage copies each tree with
`COPY --from=builder /stage/<layer>/ /`, so each layer holds whole paths from / down and nothing in
it depends on when or where it was built:

- every file, link and directory gets one fixed modification time (the --epoch);
- .pyc files are compiled after that, in timestamp mode, so their headers carry the fixed time;
- owners and modes are set here, in the stage: the venv's owner and group-writable (directories
  keep their group, setgid), everything else root's. No later layer has to copy a tree to change them.

    python stage_venv.py venv --venv /opt/venv --into /stage --epoch N --owner 1000:0 \\
        --layer 01-nvidia-cudnn-cu12=nvidia-cudnn-cu12 ... --layer 05-python='*'
    python stage_venv.py venv --partial ... --layer 01-nvidia-cudnn-cu12=nvidia-cudnn-cu12 ...

`--partial` stages the named packages only and leaves everything else in the venv for a later pass
(the builder installs NVIDIA's wheels in a step of their own); the two passes give the same trees as one.
    python stage_venv.py files --venv /opt/venv --into /stage/06-verify --epoch N --owner 1000:0 PATH...
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

REST = "*"


class StageError(Exception):
    """The layer plan and the venv disagree: the build stops with this message."""


def normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages"))
    if len(found) != 1:
        raise StageError(f"expected one site-packages under {venv}, found {len(found)}")
    return found[0]


def distributions(site: Path) -> Iterator[tuple[str, list[Path]]]:
    """(normalized name, files its RECORD lists) of every installed distribution."""
    for info in sorted(site.glob("*.dist-info")):
        name = ""
        with open(info / "METADATA", encoding="utf-8", errors="replace") as metadata:
            for line in metadata:
                if line.startswith("Name:"):
                    name = normalize_name(line.split(":", 1)[1].strip())
                    break
                if not line.strip():
                    break
        with open(info / "RECORD", newline="", encoding="utf-8") as record:
            files = [Path(os.path.normpath(site / row[0])) for row in csv.reader(record) if row]
        yield name or normalize_name(info.name.split("-")[0]), files


def pyc_source(path: Path) -> Path | None:
    """The .py a compiled file belongs to: pkg/__pycache__/mod.cpython-311.pyc -> pkg/mod.py."""
    if path.parent.name != "__pycache__" or path.suffix != ".pyc":
        return None
    return path.parent.parent / (path.name.split(".", 1)[0] + ".py")


def compile_tree(root: Path) -> None:
    """Compile every .py under `root` in timestamp mode, as pip would, under one fixed hash seed.

    The seed is fixed so that no constant whose order follows the string hash (a frozenset of mixed
    types is marshalled in iteration order) can differ between two builds. Files that do not
    compile (Python 2 samples some packages ship) are skipped, as pip skips them.
    """
    done = subprocess.run([sys.executable, "-m", "compileall", "-qq", "-f", "-j", "0", "--invalidation-mode",
                           "timestamp", str(root)], env={**os.environ, "PYTHONHASHSEED": "0"})
    if done.returncode not in (0, 1):  # 1: some file did not compile
        raise StageError(f"compileall failed on {root} (exit status {done.returncode})")


def walk(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """os.walk in sorted order, links to directories listed as files (never followed)."""
    for directory, dirnames, filenames in os.walk(root):
        links = [d for d in dirnames if os.path.islink(os.path.join(directory, d))]
        dirnames[:] = sorted(d for d in dirnames if d not in links)
        yield Path(directory), dirnames, sorted(filenames + links)


def set_times(paths: Iterable[Path], epoch: int) -> None:
    for path in paths:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def mirror_directories(directory: Path, root: Path) -> None:
    """Make `directory` (a path under `root`) and its missing parents with the source's modes."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for made in reversed(missing):
        made.mkdir()
        os.chmod(made, stat.S_IMODE(os.stat(Path("/") / made.relative_to(root)).st_mode))


def move(path: Path, root: Path) -> None:
    """Move `path` to the same absolute path under `root`.

    shutil.move: a directory from a lower image layer cannot be renamed on overlayfs (EXDEV), so it
    is copied (links kept as links) and removed.
    """
    target = root / path.relative_to("/")
    mirror_directories(target.parent, root)
    shutil.move(path, target)


def normalize(root: Path, venv: Path, owner: tuple[int, int], epoch: int) -> tuple[int, int]:
    """Owners, modes and times of one layer tree; returns (files, bytes) in it."""
    inside = "/" + str(venv.relative_to("/"))
    files = size = 0
    entries: list[Path] = []
    for directory, _, names in walk(root):
        entries.append(directory)
        entries.extend(directory / name for name in names)
    for path in entries:
        absolute = "/" + str(path.relative_to(root)) if path != root else "/"
        info = os.lstat(path)
        if absolute == inside or absolute.startswith(inside + "/"):
            os.lchown(path, *owner)
            if not stat.S_ISLNK(info.st_mode):
                mode = stat.S_IMODE(info.st_mode)
                mode = (mode & ~0o070) | ((mode & 0o700) >> 3)  # the group may do what the owner may
                if stat.S_ISDIR(info.st_mode):
                    mode |= stat.S_ISGID
                os.chmod(path, mode)
        else:
            os.lchown(path, 0, 0)
        if stat.S_ISREG(info.st_mode):
            files += 1
            size += info.st_size
    set_times(reversed(entries), epoch)  # children before parents: a parent's time is set last
    return files, size


def parse_layers(specs: Sequence[str]) -> list[tuple[str, set[str]]]:
    layers = []
    for spec in specs:
        name, _, packages = spec.partition("=")
        if not name or not packages:
            raise StageError(f"--layer {spec!r}: expected NAME=package,package or NAME='*'")
        layers.append((name, {normalize_name(p) if p != REST else REST for p in packages.split(",")}))
    return layers


def stage_venv(venv: Path, into: Path, layer_specs: Sequence[str], owner: tuple[int, int], epoch: int,
               partial: bool = False) -> list[str]:
    """Compile, then move every path of the venv into the tree of its layer; returns a summary.

    `partial`: move only the files of the packages the layers name (and their .pyc), leave the rest,
    and remove the directories that moving emptied, as if those packages had never been installed.
    """
    layers = parse_layers(layer_specs)
    rest = next((index for index, (_, packages) in enumerate(layers) if REST in packages), None)
    if partial and rest is not None:
        raise StageError(f"--partial stages named packages only, and {layers[rest][0]} takes {REST!r}")
    site = site_packages(venv)
    owners: dict[Path, int] = {}
    found: set[str] = set()
    for name, files in distributions(site):
        index = next((i for i, (_, packages) in enumerate(layers) if name in packages), rest)
        if index is None:
            if partial:
                continue
            raise StageError(f"{name} is installed but no layer takes it")
        found.add(name)
        for path in files:
            owners[path] = min(owners.get(path, index), index)
    missing = sorted({p for _, packages in layers for p in packages} - found - {REST})
    if missing:
        raise StageError(f"the layer plan names {', '.join(missing)}, which the lock did not install")

    # Sources first, so each .pyc header records the fixed time.
    set_times((directory / name for directory, _, names in walk(venv) for name in names), epoch)
    compile_tree(venv)

    roots = [into / name for name, _ in layers]
    for root in roots:
        root.mkdir(parents=True)
    fallback = rest if rest is not None else len(layers) - 1
    directories = []
    for directory, dirnames, names in walk(venv):
        directories.append((directory, not dirnames and not names))
        for name in names:
            path = directory / name
            source = pyc_source(path)
            index = owners.get(path, owners.get(source) if source else None)
            if index is None and partial:
                continue
            move(path, roots[fallback if index is None else index])
        if not dirnames and not names and not partial:  # an empty directory is the venv's own: it goes with the rest
            mirror_directories(roots[fallback] / directory.relative_to("/"), roots[fallback])
    if partial:  # deepest first, so a parent emptied by its children's removal goes too
        for directory, was_empty in reversed(directories):
            if not was_empty and directory != venv and not any(directory.iterdir()):
                directory.rmdir()
    summary = []
    for root in roots:
        count, size = normalize(root, venv, owner, epoch)
        summary.append(f"{root.name}: {count} files, {size / 1e6:.1f} MB")
    return summary


def stage_files(paths: Sequence[Path], venv: Path, into: Path, owner: tuple[int, int], epoch: int) -> list[str]:
    """Move files or trees (verify, the manifest) into one layer tree, normalized the same way."""
    into.mkdir(parents=True)
    for path in paths:
        move(path, into)
    count, size = normalize(into, venv, owner, epoch)
    return [f"{into.name}: {count} files, {size / 1e6:.1f} MB"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("venv", "files"))
    parser.add_argument("paths", nargs="*", type=Path, help="files: what to move into the tree")
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--into", type=Path, required=True)
    parser.add_argument("--epoch", type=int, required=True)
    parser.add_argument("--owner", required=True, help="uid:gid of the venv")
    parser.add_argument("--layer", action="append", default=[], help="NAME=package,... (venv)")
    parser.add_argument("--partial", action="store_true",
                        help="venv: stage only the named packages, leave the rest for a later pass")
    args = parser.parse_intermixed_args(argv)
    uid, _, gid = args.owner.partition(":")
    owner = (int(uid), int(gid))
    try:
        if args.what == "venv":
            summary = stage_venv(args.venv, args.into, args.layer, owner, args.epoch, partial=args.partial)
        else:
            summary = stage_files(args.paths, args.venv, args.into, owner, args.epoch)
    except (StageError, OSError) as error:
        print(f"stage_venv: error: {error}", file=sys.stderr)
        return 1
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
