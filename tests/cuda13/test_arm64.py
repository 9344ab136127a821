"""linux/arm64 images built on this x86_64 machine: the CUDA 13.0 images for Grace machines (GH200,
GB200, GB10), their wheels laid out natively by uv and their RUN steps run through QEMU user
emulation, then both platforms pushed to a real registry as one multi-platform tag per variant
(conftest.py builds them once for this package). torch, verify, Jupyter, SSH and the devel image's
nvcc run in the arm64 images under emulation too (CPU checks; GPU checks need an arm64 GPU machine).

Needs the kernel's binfmt_misc to run aarch64 binaries (.ci/run registers QEMU 10's qemu-user-static,
from bookworm-backports, with the F flag, so it works inside containers); without it the module
skips and says why.
"""
from __future__ import annotations

import json
import secrets
import time

import pytest
import requests

from pytorch_cuda import matrix, plan
from pytorch_cuda.engine import DockerEngine

from ..clients import SshClient, published_port, run_in_kernel, wait_for_jupyter
from ..dockerutil import VERIFY_SHM, container

pytestmark = pytest.mark.docker

CUDA = "13.0"
INDEX_TYPES = ("application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.index.v1+json")
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json")

# QEMU's CPU for everything run in the arm64 image: Neoverse N2, an Armv9 core with 128-bit SVE2 like
# Grace's Neoverse V2 (which QEMU 10 does not model). QEMU's default CPU has wider SVE, for which
# Inductor writes SVE256 code that bookworm's g++ 12 crashes on (verify's compile check says so).
EMULATED_CPU = "neoverse-n2"

# Run inside the arm64 image: what the machine, torch, cuDNN and NCCL say of themselves. cuDNN and
# NCCL are asked through their own C entry points (no GPU needed), not through the manifest.
PROBE = r'''
import ctypes, glob, json, platform
import torch
site = "/opt/venv/lib/python3.11/site-packages"
cudnn = ctypes.CDLL(glob.glob(site + "/nvidia/cudnn/lib/libcudnn.so.9")[0])
cudnn.cudnnGetVersion.restype = ctypes.c_size_t
nccl = ctypes.CDLL(glob.glob(site + "/nvidia/nccl/lib/libnccl.so.2")[0])
version = ctypes.c_int()
assert nccl.ncclGetVersion(ctypes.byref(version)) == 0
print(json.dumps({"machine": platform.machine(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "cudnn": cudnn.cudnnGetVersion(), "nccl": version.value,
                  "torch_cudnn": torch.backends.cudnn.version(),
                  "archs": torch._C._cuda_getArchFlags().split()}))  # compiled in: no GPU needed
'''


@pytest.fixture(scope="module")
def both_platforms(cuda13) -> dict:
    """The package's CUDA 13.0 images (conftest.py): every variant for both platforms, pushed."""
    if cuda13["no_arm64"]:
        pytest.skip(f"cannot run aarch64 code here: {cuda13['no_arm64']}")
    return cuda13


def test_the_arm64_image_config_says_arm64(both_platforms, docker_client):
    engine = DockerEngine(docker_client)
    specs = both_platforms["specs"]
    for variant in plan.VARIANTS:
        assert engine.architecture(specs[matrix.ARM64, variant].tag) == "arm64", variant
        assert engine.architecture(specs[matrix.AMD64, variant].tag) == "amd64", variant


def test_torch_cudnn_and_nccl_inside_the_arm64_image_are_the_matrix_ones(both_platforms, containers):
    build = both_platforms["build"]
    started = time.monotonic()
    code, output = containers.run(both_platforms["specs"][matrix.ARM64, "runtime"].tag, ["python", "-c", PROBE], timeout=900,
                                  environment={"QEMU_CPU": EMULATED_CPU})
    print(f"\nimport torch, cuDNN + NCCL loaded under emulation: {time.monotonic() - started:.0f} s")
    assert code == 0, output
    found = json.loads(output.strip().splitlines()[-1])
    major, minor, patch = (int(part) for part in build.cudnn.split(".")[:3])
    nccl_major, nccl_minor, nccl_patch = (int(part) for part in build.nccl.split(".")[:3])
    assert found["machine"] == "aarch64"
    assert found["torch"].split("+")[0] == build.torch and found["cuda"] == CUDA
    assert found["cudnn"] == major * 10000 + minor * 100 + patch  # cuDNN 9's CUDNN_VERSION encoding
    assert found["torch_cudnn"] == found["cudnn"]
    assert found["nccl"] == nccl_major * 10000 + nccl_minor * 100 + nccl_patch  # NCCL >= 2.9's NCCL_VERSION_CODE
    # The GPU archs the aarch64 torch in the image was compiled for (torch's own build flags) are the ones
    # its label and the matrix promise: the aarch64 wheel's, not the x86_64 one's.
    compiled = {arch for arch in found["archs"] if arch.startswith("sm_")}
    labels = DockerEngine(containers.client).labels(both_platforms["specs"][matrix.ARM64, "runtime"].tag)
    assert compiled == set(labels["io.pytorch-cuda.archs"].split()) == set(build.arm64.archs), found["archs"]


def test_verify_passes_its_cpu_checks_in_the_arm64_image_under_emulation(both_platforms, containers):
    # Each check's own timeout (120 s for train) is a real machine's; emulated on a busy 2-core CI
    # machine the training run took longer (killed at 120 s once), so this run gives every check 900 s.
    script = ("verify --timeout 900 --json /tmp/report.json; code=$?; echo '@@REPORT@@'; cat /tmp/report.json; "
              "exit $code")
    started = time.monotonic()
    code, output = containers.run(both_platforms["specs"][matrix.ARM64, "runtime"].tag, ["sh", "-c", script], timeout=1500,
                                  entrypoint="", shm_size=VERIFY_SHM, environment={"QEMU_CPU": EMULATED_CPU})
    print(f"\nverify under emulation ({EMULATED_CPU}): {time.monotonic() - started:.0f} s")
    table, _, report = output.partition("@@REPORT@@")
    assert code == 0, table
    checks = {check["name"]: check for check in json.loads(report)["checks"]}
    for name in ("environment", "shm", "autograd", "compile", "train"):  # what a CPU can check
        assert checks[name]["status"] == "pass", (name, checks[name])
    for name in ("driver", "health", "cuda"):  # and what it cannot, said as skipped with the reason
        assert checks[name]["status"] == "skip" and "no NVIDIA driver" in checks[name]["reason"], checks[name]
    assert checks["nccl"]["status"] == "skip" and "gloo all-reduce" in checks["nccl"]["reason"], checks["nccl"]


def test_the_arm64_jupyter_kernel_runs_aarch64_cuda_torch(both_platforms, docker_client):
    """The real Jupyter client against the arm64 server, all of it under emulation."""
    token = secrets.token_urlsafe(24)
    started = time.monotonic()
    with container(docker_client, both_platforms["specs"][matrix.ARM64, "jupyter"].tag, shm_size="1g",
                   environment={"JUPYTER_TOKEN": token, "QEMU_CPU": EMULATED_CPU},
                   ports={"8888/tcp": ("127.0.0.1", None)}) as box:
        base_url = f"http://127.0.0.1:{published_port(box, '8888/tcp')}"
        wait_for_jupyter(base_url, token, timeout=600)
        up = time.monotonic() - started
        code = ("import json, os, platform, torch; print(json.dumps({'machine': platform.machine(), "
                "'torch': torch.__version__, 'cuda': torch.version.cuda, 'uid': os.getuid()}))")
        found = json.loads(run_in_kernel(base_url, token, code, timeout=600).strip().splitlines()[-1])
    print(f"\narm64 JupyterLab up in {up:.0f} s under emulation; kernel ran torch {time.monotonic() - started - up:.0f} s")
    assert {key: found[key] for key in ("machine", "cuda", "uid")} == {"machine": "aarch64", "cuda": CUDA, "uid": 1000}
    assert found["torch"].split("+")[0] == both_platforms["build"].torch, found


def test_the_arm64_ssh_login_runs_aarch64_cuda_torch(both_platforms, docker_client, tmp_path):
    """The real OpenSSH client logs in to the arm64 sshd (key only) and runs the image's torch."""
    client = SshClient.make(tmp_path)
    keys = tmp_path / "authorized_keys"
    keys.write_text(client.public_key + "\n")
    with container(docker_client, both_platforms["specs"][matrix.ARM64, "ssh"].tag, shm_size="1g",
                   environment={"QEMU_CPU": EMULATED_CPU}, ports={"22/tcp": ("127.0.0.1", None)},
                   volumes={str(keys): {"bind": "/authorized_keys", "mode": "ro"}}) as box:
        port = published_port(box, "22/tcp")
        client.wait(port, timeout=300)
        result = client.run(port, "python", "-c", "'import platform, torch; print(platform.machine(), "
                            "torch.version.cuda)'", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["aarch64", CUDA], result.stdout


# A kernel compiled by the arm64 devel image's own nvcc (the aarch64 compiler wheels, run under
# emulation) for Grace Hopper (GH200: sm_90) and Grace Blackwell (GB200: sm_100).
GRACE_KERNEL = r'''
set -eu
verify --only toolchain
printf '__global__ void add_one(float *x) { x[threadIdx.x] += 1.0f; }\n' > /tmp/k.cu
nvcc -gencode arch=compute_90,code=sm_90 -gencode arch=compute_100,code=sm_100 -c /tmp/k.cu -o /tmp/k.o
cuobjdump --list-elf /tmp/k.o
python -c "import shutil; elf = open(shutil.which('nvcc'), 'rb').read(20); print('nvcc e_machine', int.from_bytes(elf[18:20], 'little'))"
'''


def test_the_arm64_devel_image_compiles_kernels_for_grace_gpus_under_emulation(both_platforms, containers):
    started = time.monotonic()
    code, output = containers.run(both_platforms["specs"][matrix.ARM64, "devel"].tag, ["sh", "-c", GRACE_KERNEL],
                                  timeout=1500, entrypoint="", environment={"QEMU_CPU": EMULATED_CPU})
    print(f"\narm64 devel: verify's toolchain check and nvcc for sm_90 + sm_100 under emulation: "
          f"{time.monotonic() - started:.0f} s")
    assert code == 0, output
    assert "compiled a kernel for sm_80" in output, output  # verify's own toolchain check
    for sm in ("sm_90", "sm_100"):
        assert f".{sm}." in output or f"{sm}.cubin" in output, f"no SASS for {sm}:\n{output}"
    assert "nvcc e_machine 183" in output, output  # EM_AARCH64: the compiler itself is an aarch64 binary


def test_one_tag_per_variant_in_the_registry_pulls_the_amd64_image_here(both_platforms, docker_client):
    specs, url, prefix = both_platforms["specs"], both_platforms["url"], both_platforms["prefix"]
    repository = "cuda13/pytorch-cuda"
    accept = ", ".join((*INDEX_TYPES, *MANIFEST_TYPES))
    plains = [specs[matrix.AMD64, variant].tag.rsplit(":", 1)[1] for variant in plan.VARIANTS]
    index_digests = {}
    for plain in plains:
        index = requests.get(f"{url}/v2/{repository}/manifests/{plain}", headers={"Accept": accept}, timeout=30)
        assert index.status_code == 200 and index.headers["Content-Type"] in INDEX_TYPES, index.text[:500]
        index_digests[plain] = index.headers["Docker-Content-Digest"]
        listed = {(m["platform"]["os"], m["platform"]["architecture"]): m["digest"]
                  for m in index.json()["manifests"]}
        assert set(listed) == {("linux", "amd64"), ("linux", "arm64")}, plain
        for architecture, suffix in (("amd64", "-amd64"), ("arm64", "-arm64")):
            single = requests.get(f"{url}/v2/{repository}/manifests/{plain}{suffix}",
                                  headers={"Accept": ", ".join(MANIFEST_TYPES)}, timeout=30)
            assert single.status_code == 200, single.text[:300]
            assert listed[("linux", architecture)] == single.headers["Docker-Content-Digest"], (plain, suffix)
    # Every name of the push is there (the registry is kept between runs: other tags of the line may be too).
    tags = requests.get(f"{url}/v2/{repository}/tags/list", timeout=30).json()["tags"]
    assert {f"{plain}{suffix}" for plain in plains for suffix in ("", "-amd64", "-arm64")} <= set(tags), tags

    runtime = specs[matrix.AMD64, "runtime"].tag
    local_amd64 = docker_client.images.get(runtime).id
    docker_client.images.remove(runtime)  # the pull must put the name back, through the index
    pulled = docker_client.images.pull(f"{prefix}/pytorch-cuda", tag=runtime.rsplit(":", 1)[1])
    assert pulled.attrs["Architecture"] == "amd64"
    assert pulled.id == local_amd64
    # What the verify job's alias move relies on: a pull by tag through an index records the index's
    # digest, so the alias made from it is the multi-platform index and not the amd64 image alone.
    plain = runtime.rsplit(":", 1)[1]
    assert f"{prefix}/pytorch-cuda@{index_digests[plain]}" in pulled.attrs["RepoDigests"], pulled.attrs["RepoDigests"]
