"""`build.py --preflight` as a user runs it, with a stand-in `nvidia-smi` reporting a real GPU and driver.

No Docker needed: DOCKER_HOST points nowhere, so each tag is judged from its committed manifest (what a
user gets when asking before pulling). Expected verdicts: tests/conformance (NVIDIA's rules); expected
tags for a host: tests/conformance/hosts.csv.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .dockerutil import build_py

STAND_IN = """#!{python}
# nvidia-smi as a host with these GPUs on driver {driver} answers --query-gpu.
import sys
gpus = {gpus!r}
query = next(arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("--query-gpu="))
known = ("driver_version", "name", "compute_mode") + (() if {old} else ("compute_cap",))
unknown = [field for field in query.split(",") if field not in known]
if unknown:
    print(f'Field "{{unknown[0]}}" is not a valid field to query.')
    sys.exit(2)
for name, cap in gpus:
    facts = {{"driver_version": "{driver}", "name": name, "compute_cap": cap, "compute_mode": "Default"}}
    print(", ".join(facts[field] for field in query.split(",")))
"""
# Python with the Docker SDK hidden, as on a GPU machine without Docker: `import docker` fails.
NO_SDK = "import sys\nsys.modules['docker'] = None\n"


def host_env(tmp_path: Path, driver: str, gpus: list[tuple[str, str]], old: bool = False,
             sdk: bool = True) -> dict[str, str]:
    """PATH with a stand-in nvidia-smi for `gpus` [(name, capability)] on `driver`; no Docker daemon."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(STAND_IN.format(python=sys.executable, gpus=gpus, driver=driver, old=old))
    smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DOCKER_HOST": "tcp://127.0.0.1:9"}
    if not sdk:
        hide = tmp_path / "no-sdk"
        hide.mkdir(exist_ok=True)
        (hide / "sitecustomize.py").write_text(NO_SDK)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hide), os.environ.get("PYTHONPATH", "")]))
    return env


def preflight(tmp_path: Path, tag: str, name: str, driver: str, cap: str, old: bool = False, suffix: str = "",
              sdk: bool = True):
    env = host_env(tmp_path, driver, [(name, cap)], old, sdk)
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


def test_without_the_docker_sdk_the_gpus_and_driver_are_still_judged(tmp_path):
    """A GPU machine without Docker has no `docker` package: preflight says so in one finding (defect #11)."""
    done = preflight(tmp_path, "2.4.1-cuda12.1", "NVIDIA L4", "535.104.05", "8.9", sdk=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr, done.stderr
    assert "ok     driver 535.104.05 >= 530.30.02" in done.stdout, done.stdout
    assert "sm_86 cubin runs on sm_89" in done.stdout
    said = [line for line in done.stdout.splitlines() if "Docker SDK" in line]
    assert len(said) == 1 and said[0].startswith("warn") and "could not be checked" in said[0], done.stdout
    assert "can use this host's GPUs" in done.stdout


def test_without_the_docker_sdk_a_tag_outside_the_matrix_is_one_line(tmp_path):
    done = preflight(tmp_path, "9.9.9-cuda99.9", "NVIDIA L4", "535.104.05", "8.9", sdk=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Docker SDK" in done.stderr, done.stderr


# The tag for this host (`--cuda auto`, `--preflight` without a tag). Expected tags: tests/conformance/hosts.csv.
H100 = ("NVIDIA H100 80GB HBM3", "9.0")
V100 = ("Tesla V100-SXM2-16GB", "7.0")


def test_cuda_auto_plans_the_newest_tag_this_host_can_use(tmp_path):
    """A V100 + H100 host on 580.95.05 (hosts.csv h16): the V100 rules out CUDA 13, which has no sm_70."""
    done = build_py("--cuda", "auto", "--dry-run", env=host_env(tmp_path, "580.95.05", [V100, H100], sdk=False),
                    timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    tags = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("pytorch-cuda:")]
    assert tags == [f"pytorch-cuda:2.10.0-cuda12.8-{v}" for v in ("runtime", "jupyter", "ssh")], done.stdout
    assert done.stderr.splitlines() == [
        "--cuda auto: Tesla V100-SXM2-16GB (sm_70) + NVIDIA H100 80GB HBM3 (sm_90) on driver 580.95.05: newest tag "
        "with kernels for sm_70 sm_90 and full support from this driver is 2.10.0-cuda12.8; newer tags: "
        "2.11.0-cuda13.0 to 2.15.0-cuda13.2 have no kernels for sm_70"], done.stderr


def test_cuda_auto_narrows_to_the_torch_asked(tmp_path):
    """H100 on 580.95.05 with --torch 2.7: the only 2.7 line is CUDA 12.6 (560.28.03 <= 580.95.05)."""
    env = host_env(tmp_path, "580.95.05", [H100])
    done = build_py("--cuda", "auto", "--torch", "2.7", "--dry-run", "--variant", "runtime", env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pytorch-cuda:2.7.1-cuda12.6-runtime" in done.stdout and "is 2.7.1-cuda12.6" in done.stderr


@pytest.mark.parametrize("driver, gpus, message", [
    ("580.95.05", [], "--cuda auto: no NVIDIA GPU found on this host (nvidia-smi lists none); name a version"),
    ("470.256.02", [("Tesla T4", "7.5")], "upgrade the NVIDIA driver to >= 525.60.13"),
])
def test_cuda_auto_without_a_fitting_gpu_is_one_line_and_exit_2(tmp_path, driver, gpus, message):
    done = build_py("--cuda", "auto", "--dry-run", env=host_env(tmp_path, driver, gpus), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""


def test_cuda_auto_without_nvidia_smi(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = build_py("--cuda", "auto", "--dry-run", env={"PATH": str(empty), "DOCKER_HOST": "tcp://127.0.0.1:9"},
                    timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == ("build.py: error: --cuda auto: no NVIDIA GPU found on this host (nvidia-smi not "
                                   "found); name a version instead (--cuda VERSION, see --list)")


def test_preflight_without_a_tag_judges_the_tag_for_this_host(tmp_path):
    """GTX 1080 on 560.35.03 (hosts.csv h09): 2.7.1-cuda12.6, the last tags with an sm_6x cubin. No Docker SDK."""
    done = build_py("--preflight", env=host_env(tmp_path, "560.35.03", [("NVIDIA GeForce GTX 1080", "6.1")],
                                                 sdk=False), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("for this host: NVIDIA GeForce GTX 1080 (sm_61) on driver 560.35.03: newest tag "
                               "with kernels for sm_61 and full support from this driver is 2.7.1-cuda12.6;"), lines[0]
    assert lines[1].startswith("judging pytorch-cuda:2.7.1-cuda12.6-runtime from images/2.7.1-cuda12.6/manifest.json")
    assert "ok     GPU 0 NVIDIA GeForce GTX 1080 (sm_61): sm_60 cubin runs on sm_61" in done.stdout
    assert lines[-1] == "pytorch-cuda:2.7.1-cuda12.6-runtime: can use this host's GPUs"


def test_preflight_without_a_tag_on_a_host_without_a_gpu(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = build_py("--preflight", env={"PATH": str(empty), "DOCKER_HOST": "tcp://127.0.0.1:9"}, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == "no NVIDIA GPU found on this host (nvidia-smi not found): no tag to judge\n"


@pytest.mark.parametrize("tag, name, driver, cap, instead", [
    # hosts.csv h07: CUDA 13 has no sm_70.
    ("2.14.1-cuda13.0", "Tesla V100-SXM2-16GB", "580.95.05", "7.0", "works here instead: "
     "pytorch-cuda:2.10.0-cuda12.8-runtime (Tesla V100-SXM2-16GB (sm_70) on driver 580.95.05: newest tag"),
    # hosts.csv h04: below CUDA 13's floor; 2.6.0-cuda12.4 is the newest the driver fully supports.
    ("2.14.1-cuda13.0", "NVIDIA H200", "550.54.15", "9.0", "works here instead: pytorch-cuda:2.6.0-cuda12.4-runtime"),
    # hosts.csv h20: nothing runs on 470.
    ("2.4.1-cuda12.1", "Tesla T4", "470.256.02", "7.5", "no tag of the matrix works here either: Tesla T4 (sm_75) "
     "on driver 470.256.02: no tag runs on this driver: the oldest driver floor of the tags with kernels for sm_75 "
     "is 525.60.13"),
])
def test_a_failing_tag_names_the_newest_that_works_here(tmp_path, tag, name, driver, cap, instead):
    done = preflight(tmp_path, tag, name, driver, cap)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith(instead), done.stdout


def test_a_passing_tag_names_no_other(tmp_path):
    done = preflight(tmp_path, "2.6.0-cuda12.4", "NVIDIA H100 80GB HBM3", "535.104.05", "9.0")
    assert done.returncode == 0 and "instead" not in done.stdout, done.stdout


def test_cuda_auto_on_an_aarch64_host_picks_its_arm64_images(tmp_path, monkeypatch, capsys):
    """A GH200 host (aarch64): the tag must have arm64 wheels, and the images planned are its -arm64 ones."""
    from pytorch_cuda import cli

    for key, value in host_env(tmp_path, "580.95.05", [("NVIDIA GH200 480GB", "9.0")]).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cli._platform, "machine", lambda: "aarch64")
    assert cli.main(["--cuda", "auto", "--dry-run", "--variant", "runtime"]) == 0
    said = capsys.readouterr()
    assert "2.14.1-cuda13.0" in said.err, said.err  # hosts.csv: GH200 on 580.95.05, arm64
    assert "pytorch-cuda:2.14.1-cuda13.0-runtime-arm64" in said.out, said.out


def test_preflight_runs_with_only_the_standard_library_and_verify(tmp_path):
    """The GPU machine's python3 has torch but maybe no jinja2, certifi or Docker SDK: preflight still judges."""
    env = host_env(tmp_path, "580.159.04", [H100], sdk=False)
    hide = tmp_path / "bare"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nfor name in ('docker', 'jinja2', 'certifi'):\n"
                                           "    sys.modules[name] = None\n")
    env["PYTHONPATH"] = str(hide)
    done = build_py("--preflight", "pytorch-cuda:2.11.0-cuda13.0-runtime", env=env, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok     driver 580.159.04" in done.stdout and "sm_90" in done.stdout, done.stdout
