"""The build pipeline: base images, then per image render -> build -> tag -> verify -> alias, then push.

Its rules are the product's promises, unit-tested with a fake engine (tests/test_pipeline.py):
- a tag is applied only after its build succeeded, so a failed build never leaves a half-made image
  under a name users pull;
- a variant whose runtime failed is skipped, not built on a stale runtime;
- the short alias (v2.4-cuda12.1-runtime) moves only to an image that passed verify, when asked to,
  and nothing is pushed unless every image built and passed: release.py's rules, which this calls.
"""
from __future__ import annotations

import functools
import io
import re
import subprocess
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from verify import manifest as contract
from verify import sbom

from . import baseimage, hostlock, plan, release, render, wheelcache
from .engine import BuildEvents, Engine
from .errors import BuildFailed, NothingPushed
from .matrix import AMD64, PYPI_URL, REPO_ROOT, Matrix
from .plan import ImageSpec
from .progress import Progress
from .results import BuildResult

# What every image's build context holds besides its generated files.
CONTEXT_DIRS = ("verify", "image-files")
_ARG = re.compile(r"^ARG ([A-Za-z_][A-Za-z0-9_]*)", re.M)


@dataclass(frozen=True)
class BuildOptions:
    no_cache: bool = False
    cpu_shares: int | None = None  # the RUN steps' CPU weight (docker build --cpu-shares); None: the engine's
    keep_going: bool = False
    verify: bool = False
    move_aliases: bool = True
    push: bool = False
    bootstrap_base: bool = False
    debian_mirror: str = baseimage.DEFAULT_MIRROR
    index_url: str | None = None
    ca_value: str = ""  # the PIP_CA_CERT build arg (ca.build_arg_for)
    ca_file: Path | None = None  # the same CA for pip on the host, which fills the wheel cache
    wheel_cache: Path | None = None  # None: pip in the build downloads from the index itself
    wheel_cache_port: int = wheelcache.DEFAULT_PORT
    templates: Path = render.TEMPLATES_DIR
    labels: dict[str, str] = field(default_factory=dict)  # added to every image (the git revision)


def declared_args(dockerfile: str) -> set[str]:
    """The ARG names a Dockerfile declares; only those are passed, so the builder warns of none."""
    return set(_ARG.findall(dockerfile))


def build_args(spec: ImageSpec, dockerfile: str, index_url: str | None, ca_value: str,
               runtime_image: str | None = None) -> dict[str, str]:
    """Only the build args this Dockerfile declares. `runtime_image`: what a variant builds FROM (the
    runtime's content image when it was built in this run, else its tag)."""
    offered = {
        "BASE_IMAGE": spec.base_image,
        "RUNTIME_IMAGE": runtime_image or spec.runtime_tag,
        # A variant's own packages come from PyPI (or the mirror given), not from a per-CUDA index.
        "PIP_INDEX_URL": index_url or (spec.build.index_url if spec.kind.is_root else ""),
        "PIP_CA_CERT": ca_value,
        # Another architecture: the builder stage stays on the engine's own (no emulated pip).
        "BUILDER_IMAGE": spec.builder_image if spec.platform_suffix else "",
        "TARGETARCH": plan.architecture_of(spec.platform) if spec.platform_suffix else "",
    }
    return {name: value for name, value in offered.items() if name in declared_args(dockerfile) and value}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def make_context(files: dict[str, bytes], repo_root: Path = REPO_ROOT) -> io.BytesIO:
    """A deterministic tar: the given files plus CONTEXT_DIRS from the repository.

    Fixed mtimes and owners keep COPY's cache keys stable between checkouts.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in sorted(files):
            _add_bytes(tar, name, files[name])
        for directory in CONTEXT_DIRS:
            for path in sorted((repo_root / directory).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
                    _add_bytes(tar, path.relative_to(repo_root).as_posix(), path.read_bytes(), mode)
    buffer.seek(0)
    return buffer


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def wheel_locks(spec: ImageSpec, index_url: str | None) -> list[tuple[Path, str, str]]:
    """(lock, architecture, upstream index) of every pip install in this image's build: its own lock for its
    platform and, where the builder stage installs another architecture's wheels, the builder's tools."""
    upstream = index_url or (spec.build.index_url if spec.kind.is_root else PYPI_URL)
    locks = [(spec.lock, plan.architecture_of(spec.platform), upstream)]
    if spec.kind.is_root and spec.platform_suffix:
        locks.append((render.BUILDER_TOOLS_LOCK, plan.architecture_of(AMD64), index_url or PYPI_URL))
    return locks


def fill_wheel_cache(spec: ImageSpec, options: BuildOptions, say: Callable[[str], None]) -> str:
    """Have this image's wheels in the cache (hashes checked) and its server up; returns the index URL."""
    assert options.wheel_cache is not None
    for lock, architecture, upstream in wheel_locks(spec, options.index_url):
        fetched = wheelcache.prefetch(lock, options.wheel_cache, architecture, spec.python, upstream, options.ca_file)
        say(f"wheel cache: {render.repo_path(lock)} ({architecture}): {fetched.reused} cached, {fetched.downloaded} "
            f"downloaded ({fetched.downloaded_bytes / 1e9:.2f} GB)")
    return wheelcache.ensure_server(options.wheel_cache, options.wheel_cache_port, say)


# The runtime's stages that other builds share (templates/runtime.Dockerfile.j2), in the order of its file:
# Debian's packages and the user (every tag on one base and platform), then the pip steps (their first steps
# are the same for every tag whose builder runs on one image, its NVIDIA and Python steps for every tag
# pinning the same wheels).
SYSTEM_STAGE = "system"
BUILDER_STAGE = "builder"


def shared_stages(spec: ImageSpec, args: dict[str, str]) -> list[tuple[str, str]]:
    """(stage, host lock) for each stage of a runtime that is built alone before the image: the system stage one
    build at a time per base and platform, the builder stage one at a time per image it runs on (the base, or
    the engine's own for another architecture: build_args' BUILDER_IMAGE)."""
    builder_image = args.get("BUILDER_IMAGE") or spec.base_image
    return [(SYSTEM_STAGE, f"system-stage {spec.base_image} {spec.platform}"),
            (BUILDER_STAGE, f"builder-stage {builder_image}")]


def build_shared_stages(engine: Engine, spec: ImageSpec, files: render.ImageFiles, context: bytes,
                        args: dict[str, str], options: BuildOptions, host_network: bool, progress: Progress) -> None:
    """Build the runtime's shared stages alone, each under its host lock, before the image.

    Docker's classic builder keeps an image per step, and for a step that matches several it takes the newest.
    Two builds that ran a step they share at the same time (the apt steps, the builder's first COPYs, a pip
    step of the same wheels) each left an image for it; a later build of one of them then took the other's
    and ran every step below it again (a no-change rebuild reinstalled the NVIDIA wheels; another tree under
    the final stage moved the tag). Built alone under the lock, each shared step runs once and every other
    build finds it."""
    for stage, lock in shared_stages(spec, args):
        with hostlock.held(lock, on_wait=functools.partial(progress.say, f"{spec.tag}: waiting for another build ({lock})")):
            engine.build(spec.tag, io.BytesIO(context), files.dockerfile_path, args, host_network=host_network,
                         cpu_shares=options.cpu_shares, target=stage,
                         events=BuildEvents(on_step=progress.step, on_line=progress.line))


def build_one(engine: Engine, m: Matrix, spec: ImageSpec, options: BuildOptions, progress: Progress,
              index: int, total: int, runtime_image: str | None = None) -> tuple[BuildResult, str | None, str | None]:
    """Render and build one image and tag it: (result, image ID, content image ID), the IDs None when the
    build failed. The content image is the build's own result, before the labels that change without its
    content changing (the SBOM's digest, the git revision); variants build FROM it, so a new commit that
    changes no file of the image rebuilds none of them."""
    files = render.image_files(spec, m.variant_packages.get(spec.variant, ()), options.templates)
    dockerfile = files.dockerfile
    progress.start(index, total, spec.tag)
    args = build_args(spec, dockerfile, options.index_url, options.ca_value, runtime_image)
    cached = options.wheel_cache is not None and "PIP_INDEX_URL" in declared_args(dockerfile)
    try:
        if cached:
            args["PIP_INDEX_URL"] = fill_wheel_cache(spec, options, progress.say)
        context = make_context(files.context()).getvalue()  # one tar for every build of a runtime
        if spec.kind.is_root and not options.no_cache:  # --no-cache runs every step anew, these too
            build_shared_stages(engine, spec, files, context, args, options, host_network=cached, progress=progress)
        content_id = engine.build(
            spec.tag, io.BytesIO(context), files.dockerfile_path,
            args, nocache=options.no_cache, host_network=cached, cpu_shares=options.cpu_shares,
            events=BuildEvents(on_step=progress.step, on_line=progress.line),
        )
    except wheelcache.WheelCacheError as err:
        progress.finish("FAILED")
        progress.say(f"error: wheels of {spec.tag}: {err}")
        return BuildResult(spec.tag, "failed", progress.elapsed(), note=str(err)[:80]), None, None
    except BuildFailed as err:
        progress.finish("FAILED")
        for line in err.log_tail[-12:]:
            progress.say(f"    | {line}")
        progress.say(f"error: {err}")
        return BuildResult(spec.tag, "failed", progress.elapsed(), note=err.message[:80]), None, None
    # The SBOM the build wrote is known only now: its digest becomes a label, with the git revision (one
    # metadata-only step on top of the content image).
    bom = engine.read_file(content_id, contract.SBOM_PATH)
    labels = {**({contract.SBOM_LABEL: sbom.digest(bom.decode())} if bom is not None else {}), **options.labels}
    image_id = engine.relabel(content_id, labels) if labels else content_id
    # Tags only now: a failed build never leaves a tag pointing at a half-made image.
    engine.tag(image_id, (spec.tag,))
    progress.finish("built")
    return BuildResult(spec.tag, "built", progress.elapsed(), engine.image_size(spec.tag)), image_id, content_id


def verify_and_alias(engine: Engine, spec: ImageSpec, image_id: str, result: BuildResult, options: BuildOptions,
                     say: Callable[[str], None]) -> None:
    """Run verify when asked; the short alias users pull by habit moves only to an image that passed."""
    if options.verify:
        code, output = engine.run_verify(spec.tag)
        result.verify = "passed" if code == 0 else f"FAILED (exit {code})"
        say(f"verify {spec.tag}: {result.verify}")
        if code != 0:
            for line in output.strip().splitlines()[-12:]:
                say(f"    | {line}")
    if options.move_aliases:
        result.aliases = release.alias_locally(engine, image_id, spec, result.ok)


def push_all(engine: Engine, specs: list[ImageSpec], results: list[BuildResult], say: Callable[[str], None]) -> None:
    """Push every tag and the aliases moved to it (release.publish: only when every image built and passed;
    both platforms of a tag become one index)."""
    carried = {result.tag: (result.tag, *result.aliases) for result in results}
    try:
        release.publish(engine, release.release_of(specs, carried), say,
                        not_passed=[result.tag for result in results if not result.ok])
    except NothingPushed as err:  # the failed images are in the summary, and the exit code says so
        say(str(err))


def run(engine: Engine, m: Matrix, specs: list[ImageSpec], options: BuildOptions,
        progress: Progress) -> list[BuildResult]:
    """Build `specs` in order (each runtime before its variants) and return one result per spec."""
    if options.wheel_cache is not None and not engine.reaches_host_loopback():
        progress.say("wheel cache: off (this engine's builds cannot reach this host's loopback: a remote, rootless "
                     "or Desktop engine); pip in each build downloads its wheels")
        options = replace(options, wheel_cache=None)
    bases = {(s.base_image, s.platform) for s in specs if s.kind.is_root}
    bases |= {(s.builder_image, AMD64) for s in specs if s.kind.is_root and s.platform_suffix}
    for base, platform in sorted(bases):
        architecture = plan.architecture_of(platform) if platform != AMD64 else None
        how = baseimage.ensure_base_image(engine, base, make=options.bootstrap_base, mirror=options.debian_mirror,
                                          say=progress.say, architecture=architecture)
        if how != "local":
            progress.say(f"base image {base}: {how}")
    results: list[BuildResult] = []
    failed_runtimes: set[str] = set()
    content_images: dict[str, str] = {}  # runtime tag -> its content image, which its variants build FROM
    for index, spec in enumerate(specs, 1):
        if not spec.kind.is_root and spec.runtime_tag in failed_runtimes:
            results.append(BuildResult(spec.tag, "skipped", note=f"{spec.runtime_tag} failed"))
            continue
        result, image_id, content_id = build_one(engine, m, spec, options, progress, index, len(specs),
                                                 runtime_image=content_images.get(spec.runtime_tag))
        results.append(result)
        if spec.kind.is_root and content_id is not None:
            content_images[spec.tag] = content_id
        if image_id is None:
            if spec.kind.is_root:
                failed_runtimes.add(spec.tag)
            if not options.keep_going:
                results += [BuildResult(s.tag, "skipped", note="not started (no --keep-going)") for s in specs[index:]]
                return results
            continue
        verify_and_alias(engine, spec, image_id, result, options, progress.say)
    if options.push:
        push_all(engine, specs, results, progress.say)
    return results
