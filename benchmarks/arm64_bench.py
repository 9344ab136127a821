"""arm64 beside amd64, measured in one run on this machine: cold build time and image size of one
CUDA 13 runtime for each platform, and of the devel image on top of it. On an x86_64 machine the
arm64 runtime's wheels are laid out natively by uv and its final stage's RUN steps run under QEMU
user emulation; arm64 devel runs pip and its toolchain check under emulation too. Prints; asserts nothing.

    .venv/bin/python benchmarks/arm64_bench.py [--cuda 13.0]

Both builds use --no-cache under a throwaway registry prefix, and every image they make is removed
afterwards (four CUDA images and their builder stages: about 30 GB while it runs).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from benchmarks.build_bench import BENCH_REGISTRY, build_py  # noqa: E402
from benchmarks.figures import print_figures  # noqa: E402
from pytorch_cuda import matrix, plan  # noqa: E402
from tests.dockerutil import removing_new_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", default="13.0", help="a CUDA line with aarch64 CUDA wheels")
    args = parser.parse_args()
    client = docker.from_env(timeout=600)
    m = matrix.load()
    build = m.resolve(cuda=args.cuda)
    figures = []
    with removing_new_images(client):
        sizes = {}
        for platform in matrix.PLATFORMS:
            seconds, _ = build_py("--torch", build.torch, "--cuda", build.cuda, "--platform", platform,
                                  "--variant", "runtime", "--no-alias", "--no-cache", "--registry", BENCH_REGISTRY)
            spec = plan.image_specs(m, [build], variants=("runtime",), registry=BENCH_REGISTRY, platform=platform)[0]
            image = client.images.get(spec.tag)
            sizes[platform] = image.attrs["Size"]
            figures.append((f"{platform} cold build", f"{seconds:.0f} s"))
            figures.append((f"{platform} size", f"{sizes[platform] / 1e9:.2f} GB ({image.attrs['Architecture']})"))
            seconds, _ = build_py("--torch", build.torch, "--cuda", build.cuda, "--platform", platform,
                                  "--variant", "devel", "--no-alias", "--no-cache", "--registry", BENCH_REGISTRY)
            devel = plan.image_specs(m, [build], variants=("devel",), registry=BENCH_REGISTRY, platform=platform)[0]
            added = client.images.get(devel.tag).attrs["Size"] - sizes[platform]
            figures.append((f"{platform} devel on it, cold", f"{seconds:.0f} s, +{added / 1e6:.0f} MB"))
        figures.append(("arm64 / amd64 size", f"{sizes[matrix.ARM64] / sizes[matrix.AMD64]:.2f}"))
    print_figures(f"arm64 beside amd64: {build.torch}-cuda{build.cuda} runtime, measured {time.strftime('%Y-%m-%d')}",
                  figures)


if __name__ == "__main__":
    main()
