"""`python -m verify` for real on this machine, and each check failing when it should.

Faults are injected through VERIFY_FAULT, which only the check's own process reads and which can
only break a check (see verify/faults.py).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "verify_fixtures"
EVERY_CHECK = ["environment", "driver", "health", "cuda", "cudnn", "nccl", "shm", "autograd", "compile", "toolchain",
               "train", "perf"]


def run_verify(tmp_path: Path, *args: str, fault: Optional[str] = None, timeout: float = 300,
               extra_env: Optional[Dict[str, str]] = None) -> Tuple[subprocess.CompletedProcess, Dict[str, Any], float]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("VERIFY_FAULT", "PYTORCH_CUDA_MANIFEST")}
    env.update(extra_env or {})
    if fault:
        env["VERIFY_FAULT"] = fault
    report = tmp_path / "report.json"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "verify", "--json", str(report), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - started
    data = json.loads(report.read_text()) if report.exists() else {}
    return done, data, elapsed


def checks(data: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {check["name"]: check for check in data["checks"]}


def cpu_only() -> None:
    if torch.cuda.is_available():
        pytest.skip("asserts what a machine without a GPU reports; see test_verify_gpu.py for GPU machines")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("verify-full")
    junit = tmp_path / "report.xml"
    done, data, elapsed = run_verify(tmp_path, "--junit", str(junit))
    return done, data, elapsed, junit


def test_full_run_exits_0_and_reports_every_check(full_run):
    done, data, elapsed, _ = full_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(checks(data)) == EVERY_CHECK
    assert data["summary"]["exit_code"] == 0 and data["summary"]["failed"] == 0
    # Its time is printed, not asserted: a wall-time bound fails on a busy machine, not on a slow verify (116.8 s
    # beside a CI run's image checks on 2 cores, against 11 s alone). run_verify's timeout catches a hang.
    print(f"full verify run: {elapsed:.1f} s wall")


def test_full_run_prints_a_table_and_a_summary(full_run):
    done = full_run[0]
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["CHECK", "STATUS", "TIME"]
    assert [line.split()[0] for line in lines[1:-1]] == EVERY_CHECK
    assert lines[-1].startswith("verify: ") and " passed, " in lines[-1]


def test_fingerprint(full_run):
    fingerprint = full_run[1]["fingerprint"]
    assert {"hostname", "time", "python", "torch", "cuda", "cudnn", "nccl", "driver", "gpus", "manifest",
            "tag"} <= set(fingerprint)
    assert fingerprint["python"] == platform.python_version() and fingerprint["torch"] == torch.__version__
    assert fingerprint["manifest"] is None
    machine = subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True).stdout.strip()
    assert fingerprint["machine"] == machine  # what the kernel says, asked apart from verify


def test_cpu_machine_runs_cpu_checks_and_skips_gpu_ones_out_loud(full_run):
    cpu_only()
    found = checks(full_run[1])
    for name in ("autograd", "compile", "train"):
        assert found[name]["status"] == "pass", found[name]
    assert found["environment"]["status"] == "pass"
    assert "nothing compared" in found["environment"]["reason"]
    assert found["shm"]["status"] in ("pass", "warn")  # a 64 MB /dev/shm warns
    assert found["shm"]["figures"]["batches"] == 4
    for name in ("driver", "health", "cuda", "cudnn", "nccl", "toolchain"):
        assert found[name]["status"] == "skip", found[name]
        assert found[name]["reason"].strip()
    assert "no NVIDIA driver" in found["driver"]["reason"]
    assert found["perf"]["status"] == "skip" and "--perf" in found["perf"]["reason"]


def test_nccl_check_ran_a_real_gloo_all_reduce_over_two_processes(full_run):
    cpu_only()
    nccl = checks(full_run[1])["nccl"]
    figures = nccl["figures"]
    assert (figures["backend"], figures["world_size"]) == ("gloo", 2)
    assert figures["allreduce_values"] == [3.0, 3.0]  # ranks contribute 1 and 2
    assert len(set(figures["rank_pids"])) == 2
    assert figures["busbw_gbps"] > 0  # the timed all-reduce loop ran on every rank, as with NCCL
    # The bandwidth is the slowest rank's, after a barrier (nccl-tests' way), not rank 0's alone.
    assert len(figures["rank_seconds"]) == 2
    assert figures["algbw_gbps"] == pytest.approx(figures["bandwidth_bytes"] / max(figures["rank_seconds"]) / 1e9,
                                                  abs=0.01)
    assert "NCCL not exercised" in nccl["reason"]


def test_train_really_learned(full_run):
    train = checks(full_run[1])["train"]["figures"]
    assert train["final_loss"] < 0.5 * train["initial_loss"]
    assert train["accuracy"] >= 0.5
    assert train["images_per_s"] > 0


def test_junit_file(full_run):
    suite = ET.parse(full_run[3]).getroot().find("testsuite")
    assert [case.get("name") for case in suite.findall("testcase")] == EVERY_CHECK
    assert suite.get("failures") == "0"


def test_matching_manifest_passes_and_compares(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"tag": "host-test", "torch": torch.__version__,
                                    "python": ".".join(platform.python_version_tuple()[:2]), "user": "trainer"}))
    done, data, _ = run_verify(tmp_path, "--only", "environment", "--manifest", str(manifest))
    environment = checks(data)["environment"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert environment["status"] == "pass"
    assert environment["figures"]["compared"] == ["python", "torch"]
    assert data["fingerprint"]["tag"] == "host-test"


def test_wrong_manifest_fails_environment_naming_both_versions(tmp_path):
    promised = json.loads((FIXTURES / "manifest_wrong_versions.json").read_text())
    done, data, _ = run_verify(tmp_path, "--only", "environment", "--manifest",
                               str(FIXTURES / "manifest_wrong_versions.json"))
    assert done.returncode == 1
    environment = checks(data)["environment"]
    assert environment["status"] == "fail"
    assert f"torch is {torch.__version__} but the manifest promises {promised['torch']}" in environment["reason"]
    if torch.version.cuda is None:
        assert (f"this image promises CUDA {promised['cuda']} but torch {torch.__version__} is a CPU build"
                in environment["reason"])
    assert "environment" in done.stdout.strip().splitlines()[-1]


def test_broken_gradient_and_unlearnable_labels_fail(tmp_path):
    done, data, _ = run_verify(tmp_path, "--only", "autograd,train",
                               fault="autograd:broken-grad,train:random-labels")
    assert done.returncode == 1
    found = checks(data)
    assert found["autograd"]["status"] == "fail"
    assert "dw=84 (expected 42)" in found["autograd"]["reason"]
    assert found["autograd"]["figures"]["fault_injected"] == "broken-grad"
    assert found["train"]["status"] == "fail"
    assert "not learning" in found["train"]["reason"]
    assert found["train"]["figures"]["accuracy"] < 0.3


def test_a_hang_becomes_a_timeout_failure(tmp_path):
    done, data, elapsed = run_verify(tmp_path, "--only", "autograd", "--timeout", "3", fault="autograd:hang",
                                     timeout=120)
    assert done.returncode == 1
    autograd = checks(data)["autograd"]
    assert (autograd["status"], autograd["reason"]) == ("fail", "timed out after 3 s (killed)")
    assert 3 <= autograd["duration_s"] < 15
    assert elapsed < 60


def test_crashes_and_dataloader_deaths_fail_with_a_reason(tmp_path):
    done, data, _ = run_verify(tmp_path, "--only", "shm,autograd", fault="autograd:crash,shm:bus-error")
    assert done.returncode == 1
    found = checks(data)
    assert found["autograd"]["status"] == "fail"
    assert "killed by SIGSEGV" in found["autograd"]["reason"]
    assert found["shm"]["status"] == "fail"
    assert "--shm-size=8g" in found["shm"]["reason"]


def test_unknown_fault_kind_fails_rather_than_passing(tmp_path):
    done, data, _ = run_verify(tmp_path, "--only", "autograd", fault="autograd:no-such-fault")
    assert done.returncode == 1
    assert "unknown fault" in checks(data)["autograd"]["reason"]


def test_require_gpu_fails_gpu_checks_without_a_gpu(tmp_path):
    cpu_only()
    done, data, _ = run_verify(tmp_path, "--require-gpu", "--quiet", "--only", "driver,cuda,cudnn,autograd")
    assert done.returncode == 1
    found = checks(data)
    for name in ("driver", "cuda", "cudnn"):
        assert found[name]["status"] == "fail" and "--require-gpu" in found[name]["reason"], found[name]
    assert found["autograd"]["status"] == "pass"
    shown = done.stdout.strip().splitlines()
    assert [line.split()[0] for line in shown[:-1]] == ["driver", "cuda", "cudnn"]  # --quiet: failures only
    assert shown[-1].startswith("verify: ")


def test_changed_cuda_torch_packages_fail_naming_both_versions(tmp_path):
    """The manifest lists the image's CUDA torch packages as locked; a later pip install is caught."""
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"tag": "host-test", "torch": torch.__version__,
                                    "packages": {"torch": torch.__version__, "jinja2": "0.0.1",
                                                 "nvidia-no-such-wheel": "1.0"}}))
    done, data, _ = run_verify(tmp_path, "--only", "environment", "--manifest", str(manifest))
    environment = checks(data)["environment"]
    assert done.returncode == 1 and environment["status"] == "fail"
    import jinja2
    assert f"jinja2 is {jinja2.__version__}, the image was built with 0.0.1" in environment["reason"]
    assert "nvidia-no-such-wheel 1.0 is no longer installed" in environment["reason"]
    assert "pip install --no-deps jinja2==0.0.1 nvidia-no-such-wheel==1.0" in environment["reason"]
    assert "torch" not in " ".join(environment["figures"]["packages_changed"])


def _fake_libcuda(tmp_path: Path, answer: int) -> Path:
    """A stand-in CUDA driver library whose cuDeviceGetCount answers `answer` (3: not initialised)."""
    source = tmp_path / f"libcuda{answer}.c"
    source.write_text(f"int cuDeviceGetCount(int *count) {{ *count = 1; return {answer}; }}\n")
    library = tmp_path / f"libcuda{answer}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


@pytest.mark.parametrize("answer, mode", [(3, "fork"), (0, "exec")])
def test_checks_run_in_fresh_interpreters_when_importing_torch_initialised_cuda(tmp_path, answer, mode):
    """torch 2.2/2.3 may call cuInit while importing torch._dynamo; forked checks could not use CUDA then."""
    library = _fake_libcuda(tmp_path, answer)
    done, data, _ = run_verify(tmp_path, "--only", "autograd,train", extra_env={"VERIFY_LIBCUDA": str(library)})
    assert done.returncode == 0, done.stdout + done.stderr
    runner = data["fingerprint"]["runner"]
    assert runner["check_processes"] == mode
    assert all(check["status"] == "pass" for check in data["checks"])
    if mode == "exec":
        assert "initialised the CUDA driver" in runner["why"] and "fresh interpreter" in done.stderr
    else:
        assert runner["why"] == ""


def test_exclusive_process_compute_mode_runs_checks_one_by_one(tmp_path):
    """On GPUs in Exclusive_Process mode two checks side by side would fail 'busy or unavailable'."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "nvidia-smi"
    stand_in.write_text("#!/bin/sh\necho '550.54.15, NVIDIA H100 80GB HBM3, 9.0, Exclusive_Process'\n")
    stand_in.chmod(0o755)
    done, data, _ = run_verify(tmp_path, "--only", "autograd,shm",
                               extra_env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode == 0, done.stdout + done.stderr
    runner = data["fingerprint"]["runner"]
    assert runner["parallel"] == 1 and "Exclusive_Process" in runner["serial_reason"]
    assert "one by one" in done.stderr
