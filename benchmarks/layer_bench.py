"""What a registry and a node move for two tags that pin the same NVIDIA wheels, in two layouts.

    .venv/bin/python benchmarks/layer_bench.py [--from 2.4.1-cuda12.1] [--to 2.4.0-cuda12.1]

Measured in one run, printed, asserting nothing. The registry is a real one (Debian's
docker-registry, as the tests run it), one per layout, empty at the start. The node is a second
Docker engine started on this machine with its own empty image store, pulling over loopback.

- components: the runtime images as build.py makes them (one layer per component);
- one venv layer: the previous layout, made from the same images (Debian's packages, then the
  whole of /opt as one layer, then the verify files), so both layouts hold the same files.

Figures: layer count and largest layer; bytes the registry stores after pushing the first tag, and
what the second tag adds; seconds for the node to pull the first tag cold; bytes the node fetches
to move from the first tag to the second.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from benchmarks.figures import print_figures  # noqa: E402
from pytorch_cuda import matrix, plan  # noqa: E402
from tests.dockerutil import build_py, local_registry, registry_bytes  # noqa: E402

NODE_BRIDGE = "bench-node0"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def build(*args: str) -> None:
    """build.py as the tests run it; a failure ends the benchmark with its output."""
    done = build_py(*args)
    if done.returncode != 0:
        raise SystemExit(f"build.py {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def one_layer_copy(client: docker.DockerClient, spec: plan.ImageSpec) -> str:
    """The same files in the previous layout: Debian's packages, then /opt as one layer."""
    final = spec.dockerfile.read_text().rsplit("\nFROM ${BASE_IMAGE}\n", 1)[1]
    apt = re.search(r"^RUN apt-get update.*?(?<!\\)\n", final, re.M | re.S)
    assert apt, "no apt-get RUN in the final stage"
    tag = f"bench.invalid/one-layer:{spec.stem}"
    dockerfile = (f"FROM {spec.tag} AS image\nFROM {spec.base_image}\n{apt.group(0)}"
                  "COPY --from=image /opt/ /opt/\n"
                  "COPY --from=image /etc/pytorch-cuda/ /etc/pytorch-cuda/\n"
                  "COPY --from=image /usr/local/bin/verify /usr/local/bin/verify\n")
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True, pull=False)
    return tag


@contextlib.contextmanager
def node_engine() -> Iterator[docker.DockerClient]:
    """A second Docker engine with an empty image store: the node that pulls.

    It gets a bridge of its own: an engine started with `--bridge=none` deletes docker0, which
    leaves the main engine's containers without a network.
    """
    root = Path(tempfile.mkdtemp(prefix="bench-node-", dir="/var/tmp"))
    socket = root / "docker.sock"
    subprocess.run(["ip", "link", "add", "name", NODE_BRIDGE, "type", "bridge"], check=True)
    process = subprocess.Popen(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"), "--pidfile",
         str(root / "docker.pid"), "-H", f"unix://{socket}", f"--bridge={NODE_BRIDGE}", "--iptables=false",
         "--ip-forward=false", "--ip-masq=false"],
        stdout=subprocess.DEVNULL, stderr=(root / "dockerd.log").open("w"))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = docker.DockerClient(base_url=f"unix://{socket}", timeout=3600)
                client.ping()
                break
            except docker.errors.DockerException:
                if time.monotonic() > deadline or process.poll() is not None:
                    log = (root / "dockerd.log").read_text()[-1500:]
                    raise SystemExit(f"the node engine did not start: {log}") from None
                time.sleep(0.5)
        yield client
    finally:
        process.terminate()
        process.wait(timeout=60)
        subprocess.run(["ip", "link", "delete", NODE_BRIDGE], check=False)
        shutil.rmtree(root, ignore_errors=True)


def layer_sizes(url: str, repository: str, tag: str) -> dict[str, int]:
    """Compressed size of each layer blob of a pushed image, by the short ID a pull reports."""
    response = requests.get(f"{url}/v2/{repository}/manifests/{tag}", headers={"Accept": MANIFEST_V2}, timeout=30)
    response.raise_for_status()
    return {layer["digest"].split(":")[1][:12]: layer["size"] for layer in response.json()["layers"]}


def pull(node: docker.DockerClient, ref: str) -> tuple[float, set[str]]:
    """Pull on the node; (seconds, short IDs of the layers it already had)."""
    repository, tag = ref.rsplit(":", 1)
    started = time.monotonic()
    had = set()
    for event in node.api.pull(repository, tag, stream=True, decode=True):
        if "error" in event:
            raise SystemExit(f"pull of {ref} failed: {event['error']}")
        if event.get("status") == "Already exists":
            had.add(event["id"])
    return time.monotonic() - started, had


def measure(client: docker.DockerClient, layout: str, refs: tuple[str, str]) -> list[tuple[str, str]]:
    sizes = [entry["Size"] for entry in client.api.history(refs[0]) if entry["Size"] > 0]
    figures = [(f"{layout}: layers with content / largest", f"{len(sizes)} / {max(sizes) / 1e9:.2f} GB")]
    pushed: list[str] = []
    with local_registry(client) as (address, url, box):
        try:
            stored = [registry_bytes(box)]
            for ref in refs:
                target = f"{address}/bench/{ref.rsplit('/', 1)[-1].replace(':', '-')}:{layout.replace(' ', '-')}"
                client.images.get(ref).tag(target)
                pushed.append(target)
                for event in client.images.push(target, stream=True, decode=True):
                    if "error" in event:
                        raise SystemExit(f"push of {target} failed: {event['error']}")
                stored.append(registry_bytes(box))
            first, second = stored[1] - stored[0], stored[2] - stored[1]
            figures.append((f"{layout}: registry bytes, first tag / second tag",
                            f"{first / 1e9:.2f} GB / {second / 1e9:.2f} GB = {second / first:.1%}"))
            with node_engine() as node:
                cold, _ = pull(node, pushed[0])
                figures.append((f"{layout}: cold pull of the first tag by a node", f"{cold:.1f} s"))
                seconds, had = pull(node, pushed[1])
                repository, tag = pushed[1].split("/", 1)[1].rsplit(":", 1)
                blobs = layer_sizes(url, repository, tag)
                fetched = sum(size for short, size in blobs.items() if short not in had)
                figures.append((f"{layout}: node upgrade to the second tag, bytes fetched",
                                f"{fetched / 1e9:.2f} GB of {sum(blobs.values()) / 1e9:.2f} GB ({seconds:.1f} s)"))
        finally:
            for target in pushed:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(target)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="first", default="2.4.1-cuda12.1", help="the tag a node holds")
    parser.add_argument("--to", dest="second", default="2.4.0-cuda12.1", help="the tag it moves to")
    args = parser.parse_args()

    client = docker.from_env(timeout=3600)
    m = matrix.load()
    specs = []
    for stem in (args.first, args.second):
        torch, cuda = stem.split("-cuda")
        spec = plan.image_specs(m, [m.resolve(cuda=cuda, torch=torch)], variants=("runtime",))[0]
        build("--torch", torch, "--cuda", cuda, "--variant", "runtime", "--no-alias")  # warm: not timed
        specs.append(spec)
    shared = [layer.packages for layer in specs[0].layer_plan] == [layer.packages for layer in specs[1].layer_plan]
    copies = [one_layer_copy(client, spec) for spec in specs]
    figures = [("the two tags' layer plans", "the same packages per layer" if shared else "different")]
    try:
        figures += measure(client, "components", (specs[0].tag, specs[1].tag))
        figures += measure(client, "one venv layer", (copies[0], copies[1]))
    finally:
        for tag in copies:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(tag)
    print_figures(f"pytorch-cuda layer benchmark: {args.first} -> {args.second}", figures)


if __name__ == "__main__":
    main()
