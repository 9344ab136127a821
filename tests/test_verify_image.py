"""`verify` inside the real runtime image, on this GPU-less machine, and build.py's --verify and --preflight."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from .dockerutil import VERIFY_SHM, TrackedContainers, build_py, verify_report

pytestmark = pytest.mark.docker


def _checks(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


@pytest.fixture(scope="module")
def full_run(built, docker_client) -> Iterator[tuple[int, dict, str]]:
    """One full `verify` in the runtime image as its user, read by the tests of what that run says."""
    tracked = TrackedContainers(docker_client)
    failed = True
    try:
        yield verify_report(tracked, built["runtime"].tag, shm_size=VERIFY_SHM)
        failed = False
    finally:
        tracked.close(failed=failed)


def test_verify_passes_in_the_runtime_image_without_gpu(built, containers, full_run):
    spec = built["runtime"]
    code, report, table = full_run
    assert code == 0, table
    checks = _checks(report)
    for name in ("environment", "driver", "health", "cuda", "cudnn", "nccl", "shm", "autograd", "compile", "train"):
        assert name in checks, f"{name} missing from the report"
    for name in ("autograd", "compile", "train", "environment", "shm"):
        assert checks[name]["status"] == "pass", (name, checks[name])
    for name in ("driver", "health", "cuda"):
        assert checks[name]["status"] == "skip" and checks[name]["reason"], checks[name]
    assert checks["toolchain"]["status"] == "skip" and "not a devel image" in checks["toolchain"]["reason"]
    # Checks are forked from the runner that imported torch once (a fresh interpreter per check costs a
    # torch import each): nothing in the image's torch import pushes them into exec mode.
    runner = report["fingerprint"]["runner"]
    assert (runner["check_processes"], runner["why"]) == ("fork", ""), runner
    # The versions verify read from the loaded libraries (not the manifest's promise) are what torch
    # itself reports in a separate process, and the matrix's.
    probe = "import torch; print(torch.backends.cudnn.version(), '.'.join(map(str, torch.cuda.nccl.version()[:3])))"
    code, out = containers.run(spec.tag, ["python", "-c", probe])
    cudnn_code, nccl = out.strip().splitlines()[-1].split()
    assert checks["nccl"]["figures"]["version"] == nccl == spec.build.nccl, checks["nccl"]["figures"]
    major, minor, patch = (int(part) for part in spec.build.cudnn.split(".")[:3])
    assert int(cudnn_code) == major * 10000 + minor * 100 + patch
    assert checks["cudnn"]["figures"]["runtime"] == f"{major}.{minor}.{patch}", checks["cudnn"]["figures"]


def test_verify_compile_runs_as_the_non_root_user(full_run):
    code, report, table = full_run
    assert code == 0, table
    figures = _checks(report)["compile"]["figures"]  # read from the process (geteuid), not the manifest
    assert (figures["user"], figures["uid"], figures["root"]) == ("pytorch", 1000, False), figures


def test_verify_reports_the_user_it_really_ran_as(built, containers):
    """Run as root, the figure changes with it (the manifest still says pytorch): it is measured."""
    code, report, table = verify_report(containers, built["runtime"].tag, "--only", "compile", user="0")
    assert code == 0, table
    figures = _checks(report)["compile"]["figures"]
    assert (figures["user"], figures["uid"], figures["root"]) == ("root", 0, True), figures
    assert figures["image_user"] == "pytorch"


def test_a_cudnn_torch_refuses_is_explained(built, containers):
    """torch raises on a cuDNN of another major (e.g. one LD_LIBRARY_PATH brought in): say where to look."""
    code, report, table = verify_report(containers, built["runtime"].tag, "--only", "cudnn",
                                         environment={"VERIFY_FAULT": "cudnn:runtime-mismatch"})
    cudnn = _checks(report)["cudnn"]
    assert code == 1 and cudnn["status"] == "fail", cudnn
    assert "cuDNN version incompatibility" in cudnn["reason"] and "LD_LIBRARY_PATH" in cudnn["reason"]


def test_tiny_shm_fails_with_the_fix(built, containers):
    """Docker's default /dev/shm is 64 MB; with 1 MB a DataLoader with workers cannot share tensors."""
    code, report, table = verify_report(containers, built["runtime"].tag, "--only", "shm", shm_size="1m")
    shm = _checks(report)["shm"]
    assert code == 1 and shm["status"] == "fail", shm
    assert "--shm-size" in shm["reason"] or "ipc" in shm["reason"], shm["reason"]


def test_default_docker_shm_warns(built, containers):
    code, report, table = verify_report(containers, built["runtime"].tag, "--only", "shm")
    shm = _checks(report)["shm"]
    # 64 MiB, as Docker gives by default: enough for the check's own 4 MiB batches, which all came
    # through, too small for real DataLoader work, so a warning with the fix and not a failure.
    assert shm["status"] == "warn", shm
    assert shm["figures"]["shm_bytes"] == 64 * 2**20 and shm["figures"]["batches"] == 4, shm["figures"]
    assert "--shm-size" in shm["reason"], shm["reason"]


def test_require_gpu_fails_on_this_machine(built, containers):
    code, report, table = verify_report(containers, built["runtime"].tag, "--only", "cuda,driver", "--require-gpu")
    assert code == 1
    assert {c["status"] for c in report["checks"]} == {"fail"}


def test_preflight_on_this_host_says_why_not(built, docker_client):
    result = build_py("--preflight", built["runtime"].tag)
    assert result.returncode == 1
    assert "no NVIDIA driver on this host" in result.stdout
    assert "cannot use this host's GPUs" in result.stdout
    # The platform finding, from the image's config as the engine records it: amd64 on this x86_64 host.
    machine = subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True).stdout.strip()
    if machine == "x86_64" and docker_client.images.get(built["runtime"].tag).attrs["Architecture"] == "amd64":
        assert "ok     the image is linux/amd64, like this host (x86_64)" in result.stdout, result.stdout


def test_preflight_of_a_missing_image_is_one_line():
    result = build_py("--preflight", "pytorch-cuda:0.0.0-cuda0.0-runtime")
    assert result.returncode == 1
    assert "is not here" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_verify_reports_the_lock_digest(built, docker_client, containers):
    spec = built["runtime"]
    code, report, table = verify_report(containers, spec.tag, "--only", "environment")
    assert code == 0, table
    expected = docker_client.images.get(spec.tag).labels["io.pytorch-cuda.lock-digest"]
    assert expected.startswith("sha256:")
    assert report["fingerprint"]["lock_digest"] == expected
    assert _checks(report)["environment"]["figures"]["lock_digest"] == expected
