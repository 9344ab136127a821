"""Build speed and image size figures, measured in one run on this machine. Prints; asserts nothing.

    .venv/bin/python benchmarks/build_bench.py [--cuda 12.1] [--skip-cold]

1. pip download of the runtime's wheels on the host (the network floor of a cold build);
2. cold build of the runtime image (--no-cache, under a throwaway registry prefix, removed after);
3. no-change rebuild of runtime, jupyter and ssh;
4. rebuild after a change to the jupyter template only: is the torch layer reused?
5. runtime image size against its lower bound: base image + installed size of its Python packages;
6. with --devel-cuda: what the devel image adds to its runtime image (size, layers), against the
   public pytorch/pytorch devel image of the same era (12.4 GiB uncompressed, quoted);
7. with --second-tag 2.4.0: the caches a second tag finds. A cold build of the runtime (--no-cache, an
   empty wheel cache), then the second tag of the same NVIDIA pins as a user builds it (its NVIDIA pip
   step a layer-cache hit, only the wheels that differ downloaded), printed as a ratio of the cold one,
   then that tag again with --no-cache (the wheel cache alone); on a base image of the run's own, under a
   throwaway registry prefix, all removed after.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from benchmarks.figures import print_figures  # noqa: E402
from pytorch_cuda import matrix, plan  # noqa: E402
from pytorch_cuda.engine import dockerfile_context  # noqa: E402

BENCH_REGISTRY = "bench.invalid/pytorch-cuda-bench"


def timed(command: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds, result


def build_py(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    return timed([sys.executable, str(REPO / "build.py"), *args], cwd=REPO)


def pip_download_seconds(build: matrix.MatrixEntry, python: str) -> tuple[float, int]:
    """Download the same wheels the image installs, for the image's platform, into a temp dir."""
    with tempfile.TemporaryDirectory(prefix="bench-wheels-") as tmp:
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": ""}  # no local wheels, no caps
        seconds, _ = timed(
            [sys.executable, "-m", "pip", "download", "--no-cache-dir", "-q", "--dest", tmp,
             "--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
             "--python-version", python, "--implementation", "cp", "--index-url", build.index_url,
             *build.requirements],
            env=env,
        )
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    return seconds, size


# Uncompressed size of pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel, the image users compare a devel
# image with (figure from the devel issue); it cannot be pulled here, so it is a quoted anchor.
PUBLIC_DEVEL_GIB = 12.4


def devel_figures(client: docker.DockerClient, m: matrix.Matrix, cuda: str) -> list[tuple[str, str]]:
    """Build runtime and devel of one CUDA line (warm cache), then compare them layer by layer."""
    build = m.resolve(cuda=cuda)
    specs = {s.variant: s for s in plan.image_specs(m, [build], variants=("runtime", "devel"))}
    seconds, _ = build_py("--cuda", cuda, "--variant", "devel")
    runtime = client.images.get(specs["runtime"].tag)
    devel = client.images.get(specs["devel"].tag)
    runtime_layers = runtime.attrs["RootFS"]["Layers"]
    devel_layers = devel.attrs["RootFS"]["Layers"]
    shared = devel_layers[: len(runtime_layers)] == runtime_layers
    added = devel.attrs["Size"] - runtime.attrs["Size"]
    return [
        (f"devel build after runtime ({specs['devel'].tag})", f"{seconds:.1f} s"),
        ("devel image size", f"{devel.attrs['Size'] / 1e9:.2f} GB (runtime {runtime.attrs['Size'] / 1e9:.2f} GB)"),
        ("devel adds on top of runtime", f"{added / 1e6:.0f} MB in {len(devel_layers) - len(runtime_layers)} layers"),
        ("runtime layers shared by devel", "yes" if shared else "NO"),
        ("devel / public pytorch devel (both uncompressed)",
         f"{devel.attrs['Size'] / 2**30:.2f} GiB / {PUBLIC_DEVEL_GIB} GiB"),
    ]


def remove_bench_images(client: docker.DockerClient, before: set[str]) -> None:
    """The benchmark's tags, then the untagged builder stages it left (several GB); the real cache stays."""
    for image in client.images.list(name=f"{BENCH_REGISTRY}/pytorch-cuda"):
        for tag in image.tags:
            client.images.remove(tag)
    for image in client.images.list(filters={"dangling": True}):
        if image.id not in before:
            client.images.remove(image.id)


def bench_base(client: docker.DockerClient, base_image: str) -> str:
    """A base image of this run's own (the base plus a label), so the builds below find no layer cache of
    this machine's earlier builds: only what the cold build leaves, as on a machine that built one tag."""
    tag = f"{BENCH_REGISTRY}/base:{time.time_ns()}"
    dockerfile = f"FROM {base_image}\nLABEL io.pytorch-cuda.bench={tag.rsplit(':', 1)[1]}\n"
    client.images.build(fileobj=dockerfile_context(dockerfile), custom_context=True, tag=tag, rm=True)
    return tag


def second_tag_figures(client: docker.DockerClient, m: matrix.Matrix, cuda: str, second: str) -> list[tuple[str, str]]:
    """The first tag cold (--no-cache, an empty wheel cache), then the second tag as a user builds it (the
    layer cache and the wheel cache the first left), then the second again with --no-cache (the wheel
    cache alone). All on a base image of their own, so no earlier build of this machine serves as cache."""
    first = m.resolve(cuda=cuda)
    other = m.resolve(cuda=cuda, torch=second)
    before = {image.id for image in client.images.list(all=True)}
    base = bench_base(client, plan.image_specs(m, [first], variants=("runtime",))[0].base_image)
    common = ("--cuda", cuda, "--variant", "runtime", "--no-alias", "--registry", BENCH_REGISTRY, "--base", base)
    with tempfile.TemporaryDirectory(prefix="bench-wheel-cache-") as cache:
        # Its own cache and server port, so the figures do not depend on what this machine has cached.
        os.environ.update(PYTORCH_CUDA_WHEEL_CACHE=cache, PYTORCH_CUDA_WHEEL_CACHE_PORT="38799")
        try:
            cold_s, cold = build_py("--torch", first.torch, "--no-cache", *common)
            second_s, warm = build_py("--torch", other.torch, "--verbose", *common)
            remove_bench_images(client, before)  # the disk both builds took (about 15 GB), before the third
            again_s, again = build_py("--torch", other.torch, "--no-cache", *common)
        finally:
            del os.environ["PYTORCH_CUDA_WHEEL_CACHE"], os.environ["PYTORCH_CUDA_WHEEL_CACHE_PORT"]
            subprocess.run(["pkill", "-f", f"wheelcache serve {cache}"], check=False)
            remove_bench_images(client, before)
            client.images.remove(base)

    def fetched(result: subprocess.CompletedProcess) -> str:
        return "; ".join(line.split(": ", 2)[-1] for line in result.stderr.splitlines() if line.startswith("wheel cache: ")
                         and "downloaded" in line)

    # --verbose shows pip's output of every step that ran: a cached NVIDIA step collects no NVIDIA wheel.
    nvidia_step = re.search(r"Collecting nvidia-", warm.stdout + warm.stderr) is None
    return [
        (f"cold runtime {first.torch}-cuda{cuda} (--no-cache, empty wheel cache)", f"{cold_s:.1f} s ({fetched(cold)})"),
        (f"then {other.torch}-cuda{cuda} (the layer and wheel caches the first left)", f"{second_s:.1f} s ({fetched(warm)})"),
        ("  its NVIDIA pip step found in the layer cache", "yes" if nvidia_step else "NO"),
        ("second tag / cold", f"{second_s / cold_s:.2f} x (goal <= 0.4)"),
        (f"{other.torch}-cuda{cuda} again with --no-cache (the wheel cache alone)", f"{again_s:.1f} s ({fetched(again)})"),
        ("that / cold", f"{again_s / cold_s:.2f} x"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", default="12.1")
    parser.add_argument("--skip-cold", action="store_true", help="skip the pip download and cold build (minutes)")
    parser.add_argument("--devel-cuda", metavar="CUDA", help="also measure the devel image of this CUDA line")
    parser.add_argument("--second-tag", metavar="TORCH", help="also time this torch release of --cuda after a cold "
                                                              "build of the newest, with the wheel cache the first filled")
    args = parser.parse_args()

    client = docker.from_env(timeout=3600)
    m = matrix.load()
    build = m.resolve(cuda=args.cuda)
    specs = {s.variant: s for s in plan.image_specs(m, [build])}
    runtime = specs["runtime"]
    figures: list[tuple[str, str]] = []

    # Make sure the three images exist (not timed) so the rebuild figures start from a warm cache.
    build_py("--cuda", args.cuda)

    if not args.skip_cold:
        download_s, download_bytes = pip_download_seconds(build, runtime.python)
        figures.append(("pip download of the runtime wheels", f"{download_s:.1f} s ({download_bytes / 1e9:.2f} GB)"))
        before = {image.id for image in client.images.list(all=True)}
        cold_s, _ = build_py("--cuda", args.cuda, "--variant", "runtime", "--no-cache", "--registry", BENCH_REGISTRY)
        figures.append(("cold build of the runtime image (--no-cache)", f"{cold_s:.1f} s"))
        figures.append(("cold build / pip download", f"{cold_s / download_s:.2f} x"))
        remove_bench_images(client, before)

    rebuild_s, _ = build_py("--cuda", args.cuda)
    figures.append(("no-change rebuild of runtime + jupyter + ssh", f"{rebuild_s:.1f} s"))

    runtime_id = client.images.get(runtime.tag).id
    torch_layer = client.images.get(runtime.tag).attrs["RootFS"]["Layers"]
    with tempfile.TemporaryDirectory(prefix="bench-templates-") as tmp:
        templates = Path(tmp) / "templates"
        shutil.copytree(REPO / "templates", templates)
        jupyter = templates / "jupyter.Dockerfile.j2"
        text = jupyter.read_text().replace(
            "EXPOSE 8888", f"RUN echo 'benchmark change {time.time_ns()}' > /etc/pytorch-cuda/bench\nEXPOSE 8888", 1
        )
        jupyter.write_text(text)
        changed_s, result = build_py("--cuda", args.cuda, "--templates", str(templates), "--verbose")
    jupyter_layers = client.images.get(specs["jupyter"].tag).attrs["RootFS"]["Layers"]
    reused = client.images.get(runtime.tag).id == runtime_id and jupyter_layers[: len(torch_layer)] == torch_layer
    reinstalled = "torch==" in result.stdout + result.stderr and "Downloading torch" in result.stdout + result.stderr
    figures.append(("rebuild after a jupyter-only template change", f"{changed_s:.1f} s"))
    figures.append(("torch layer reused by that rebuild", "yes" if reused and not reinstalled else "NO"))
    build_py("--cuda", args.cuda)  # put the committed jupyter image back

    size = client.images.get(runtime.tag).attrs["Size"]
    base_size = client.images.get(runtime.base_image).attrs["Size"]
    venv = client.containers.run(runtime.tag, ["du", "-sb", "/opt/venv"], remove=True).decode().split()[0]
    bound = base_size + int(venv)
    figures.append(("runtime image size", f"{size / 1e9:.2f} GB"))
    figures.append(("lower bound: base + Python packages", f"{bound / 1e9:.2f} GB ({base_size / 1e6:.0f} MB + {int(venv) / 1e9:.2f} GB)"))
    figures.append(("size / lower bound", f"{size / bound:.3f} x"))

    if args.devel_cuda:
        figures.extend(devel_figures(client, m, args.devel_cuda))
    if args.second_tag:
        figures.extend(second_tag_figures(client, m, args.cuda, args.second_tag))

    print_figures(f"pytorch-cuda build benchmark: torch {build.torch}, CUDA {build.cuda}, {os.cpu_count()} CPUs",
                  figures)


if __name__ == "__main__":
    main()
