"""Lock files: the exact Python packages of each image, with hashes, resolved from the tag's index.

    python -m pytorch_cuda.lock --all              # (re)write images/<tag>/<variant>.lock
    python -m pytorch_cuda.lock --all --variant devel   # only the devel locks
    python -m pytorch_cuda.lock --cuda 12.1 --check  # exit 1 if the index now resolves differently

Builds install a lock with `pip --require-hashes --no-deps`, so an ordinary build never drifts;
locks change only when this command is run on purpose. uv resolves for the image's platform
(Linux x86_64, the base image's glibc and Python), not for the machine running it.

One lock serves every platform of a tag: uv lists the hashes of all wheels of each pinned version.
That holds only while linux/arm64 resolves to the same pins, so a release with arm64 wheels is
resolved for both and a difference stops the lock (its message names the packages).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from verify.packages import canonical

from . import lockfile, matrix, plan, render, variants
from .errors import PytorchCudaError

# uv's name for each Docker platform's wheels, at Debian bookworm's glibc.
PYTHON_PLATFORMS = {matrix.AMD64: "x86_64-manylinux_2_36", matrix.ARM64: "aarch64-manylinux_2_36"}
LOCKED_VARIANTS = variants.LOCKED
# uv, for the builder stage of an image for another architecture: it lays out that architecture's
# wheels in the venv without emulation (pip refuses to install wheels of another platform).
BUILDER_TOOLS = ("uv==0.13.9",)


def header(spec: plan.ImageSpec) -> str:
    return (
        f"# Lock of {spec.tag}: every Python package, pinned with hashes.\n"
        f"# Regenerate on purpose: python -m pytorch_cuda.lock --torch {spec.build.torch} --cuda {spec.build.cuda}\n"
    )


def _uv() -> str:
    try:
        import uv  # the PyPI package ships the binary
    except ImportError:
        raise PytorchCudaError("locking needs uv: pip install -r requirements.txt") from None
    return uv.find_uv_bin()


def compile_lock(requirements: list[str], python: str, index_url: str, constraints: Path | None = None,
                 platform: str = matrix.AMD64) -> str:
    """Resolve `requirements` for the image's Docker `platform`; the lock's text, without our header."""
    command = [
        _uv(), "pip", "compile", "-", "--python-version", python, "--python-platform", PYTHON_PLATFORMS[platform],
        "--generate-hashes", "--index-url", index_url, "--no-header", "--quiet", "--native-tls",
        "--no-annotate",
    ]
    if constraints is not None:
        command += ["--constraint", str(constraints)]
    env = {**os.environ, "UV_NO_CONFIG": "1"}  # this machine's uv/pip settings are not the image's
    result = subprocess.run(command, input="\n".join(requirements) + "\n", capture_output=True, text=True, env=env,
                            timeout=600)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PytorchCudaError(f"uv could not resolve {' '.join(requirements)} from {index_url}: {reason}")
    return result.stdout


def lock_text(spec: plan.ImageSpec, packages: tuple[str, ...], runtime_lock: Path | None) -> str:
    if spec.kind.is_root:
        wanted, index_url, constraints = list(spec.build.requirements), spec.build.index_url, None
    else:
        # The variant's own packages (devel: its build tools and, for CUDA 13, the compiler's wheels),
        # resolved so that nothing of the runtime changes.
        wanted, index_url, constraints = list(packages), matrix.PYPI_URL, runtime_lock
        if spec.kind.compiler:  # the compiler's wheels the runtime does not have already
            have = lockfile.pins(runtime_lock) if runtime_lock else {}
            wanted += [pin for pin in spec.build.devel.get("pip", ()) if _name(pin) not in have]
    body = compile_lock(wanted, spec.python, index_url, constraints=constraints)
    for platform in spec.build.platforms:  # one lock serves every platform the tag is built for
        if platform != matrix.AMD64:
            other = compile_lock(wanted, spec.python, index_url, constraints=constraints, platform=platform)
            if other != body:
                raise PytorchCudaError(platform_difference(spec.tag, platform, body, other))
    return header(spec) + body


def platform_difference(tag: str, platform: str, amd64_text: str, other_text: str) -> str:
    """Why one lock cannot serve both platforms of `tag`: the pins that differ, in one line."""
    amd64, other = lockfile.pins_of(amd64_text), lockfile.pins_of(other_text)
    differences = [f"{name} {amd64.get(name, '-')} vs {other.get(name, '-')}"
                   for name in sorted(set(amd64) | set(other)) if amd64.get(name) != other.get(name)]
    if not differences:  # same pins, other text: the hashes of some wheel differ between the two resolutions
        differences = ["same pins, other hashes"]
    return (f"{tag}: linux/amd64 and {platform} resolve to different packages ({'; '.join(differences)}), "
            "and one lock serves both: build that tag for linux/amd64 only, or give it a lock per platform")


def builder_tools_text() -> str:
    """The builder-tools lock: uv with the hashes of all its wheels (the builder's own architecture
    is whatever machine builds)."""
    return ("# Tools of the builder stage (not in any image): pinned with hashes.\n"
            "# Regenerate on purpose: python -m pytorch_cuda.lock --all\n"
            + compile_lock(list(BUILDER_TOOLS), "3.11", matrix.PYPI_URL))


def _name(requirement: str) -> str:
    return canonical(re.split(r"[\[=<>!~ ]", requirement, maxsplit=1)[0])


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytorch_cuda.lock", description=__doc__.splitlines()[0])
    parser.add_argument("--cuda")
    parser.add_argument("--torch")
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--variant", action="append", choices=LOCKED_VARIANTS,
                        help="repeatable; default: every locked variant (a new variant's locks alone: --variant devel)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a lock would change")
    args = parser.parse_args(argv)
    m = matrix.load()
    if args.all:
        builds = [b for b in m.newest_per_tag()
                  if (not args.cuda or b.cuda == args.cuda) and (not args.torch or args.torch in (b.torch, b.torch_minor))]
    elif args.cuda or args.torch:
        builds = [m.resolve(cuda=args.cuda, torch=args.torch)]
    else:
        parser.error("say which tags: --cuda, --torch or --all")
    changed = []
    if args.all and not args.variant:
        text = builder_tools_text()
        if not render.BUILDER_TOOLS_LOCK.exists() or render.BUILDER_TOOLS_LOCK.read_text() != text:
            changed.append(render.BUILDER_TOOLS_LOCK)
            if not args.check:
                render.BUILDER_TOOLS_LOCK.write_text(text)
    for spec in plan.image_specs(m, builds, variants=tuple(args.variant or LOCKED_VARIANTS)):
        text = lock_text(spec, m.variant_packages.get(spec.variant, ()), spec.runtime_lock)
        path = spec.lock
        if not path.exists() or path.read_text() != text:
            changed.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        print(f"{'changed' if path in changed else 'same   '}  {path.relative_to(matrix.REPO_ROOT)}")
    if args.check and changed:
        print(f"{len(changed)} lock(s) would change: the index resolves differently now", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    try:
        return run()
    except PytorchCudaError as err:
        print(f"lock: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())

