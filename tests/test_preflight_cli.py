"""`build.py --preflight` as a user runs it, with a stand-in `nvidia-smi` reporting a real GPU and driver.

No Docker needed: DOCKER_HOST points nowhere, so each tag is judged from its committed manifest (what a
user gets when asking before pulling). Expected verdicts: tests/conformance (NVIDIA's rules).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .dockerutil import build_py

STAND_IN = """#!{python}
# nvidia-smi as a host with one {name} on driver {driver} answers --query-gpu.
import sys
facts = {{"driver_version": "{driver}", "name": "{name}", "compute_cap": "{cap}", "compute_mode": "Default"}}
query = next(arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("--query-gpu="))
unknown = [field for field in query.split(",") if field not in facts or ({old} and field == "compute_cap")]
if unknown:
    print(f'Field "{{unknown[0]}}" is not a valid field to query.')
    sys.exit(2)
print(", ".join(facts[field] for field in query.split(",")))
"""


def preflight(tmp_path: Path, tag: str, name: str, driver: str, cap: str, old: bool = False, suffix: str = ""):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(STAND_IN.format(python=sys.executable, name=name, driver=driver, cap=cap, old=old))
    smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DOCKER_HOST": "tcp://127.0.0.1:9"}
    return build_py("--preflight", f"pytorch-cuda:{tag}-runtime{suffix}", env=env, timeout=120)


def test_an_l4_has_kernels_in_the_cuda_12_1_image(tmp_path):
    done = preflight(tmp_path, "2.4.1-cuda12.1", "NVIDIA L4", "535.104.05", "8.9")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sm_86 cubin runs on sm_89" in done.stdout and "no kernel image" not in done.stdout
    assert "can use this host's GPUs" in done.stdout
    machine = subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True).stdout.strip()
    if machine == "x86_64":  # the committed tags are linux/amd64 images
        assert "ok     the image is linux/amd64, like this host (x86_64)" in done.stdout, done.stdout


@pytest.mark.parametrize("tag, driver", [("2.6.0-cuda12.4", "535.104.05"), ("2.10.0-cuda12.8", "550.54.15")])
def test_an_h100_fleet_driver_runs_newer_cuda_12_images_with_a_warning(tmp_path, tag, driver):
    done = preflight(tmp_path, tag, "NVIDIA H100 80GB HBM3", driver, "9.0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warn   driver " + driver in done.stdout and "minor version compatibility" in done.stdout


def test_a_cuda_13_image_on_a_550_driver_is_refused_with_the_floor(tmp_path):
    done = preflight(tmp_path, "2.14.1-cuda13.0", "NVIDIA H200", "550.54.15", "9.0")
    assert done.returncode == 1
    assert "fail   driver 550.54.15 is older than 580, the oldest driver that runs CUDA 13.x" in done.stdout
    assert "cannot use this host's GPUs (1 problem(s))" in done.stdout


def test_a_driver_too_old_for_compute_cap_is_not_mistaken_for_no_driver(tmp_path):
    done = preflight(tmp_path, "2.4.1-cuda12.1", "Tesla T4", "470.256.02", "7.5", old=True)
    assert done.returncode == 1
    assert "no NVIDIA driver" not in done.stdout
    assert "driver 470.256.02 is older than 525.60.13" in done.stdout
    assert "compute capability unknown" in done.stdout and "needs >= 510" in done.stdout


def test_an_arm64_tag_is_judged_with_the_aarch64_wheels_archs(tmp_path):
    """PyPI's aarch64 torch 2.14.1 is built for sm_80 and newer (images/matrix.json, arm64.archs), while
    its x86_64 wheel has sm_75: a T4 (7.5) has kernels in the amd64 image but none in the arm64 one."""
    amd64 = preflight(tmp_path, "2.14.1-cuda13.0", "Tesla T4", "580.95.05", "7.5")
    arm64 = preflight(tmp_path, "2.14.1-cuda13.0", "Tesla T4", "580.95.05", "7.5", suffix="-arm64")
    assert "ok     GPU 0 Tesla T4 (sm_75): sm_75 cubin" in amd64.stdout, amd64.stdout
    assert arm64.returncode == 1
    assert "with the archs of pytorch-cuda:2.14.1-cuda13.0-runtime-arm64" in arm64.stdout, arm64.stdout
    assert ("fail   GPU 0 Tesla T4 (sm_75) is not covered by the compiled architectures "
            "(sm_80 sm_90 sm_100 sm_110 sm_120)") in arm64.stdout, arm64.stdout
    machine = subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True).stdout.strip()
    if machine == "x86_64":
        assert "fail   the image is linux/arm64 but this host is x86_64" in arm64.stdout, arm64.stdout
