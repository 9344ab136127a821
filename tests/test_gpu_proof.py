"""tools/gpu_proof.py: its bands, its assertions, its step runner, and the whole script rehearsed on the CPU.

The rehearsals run the real script with a short deadline and a subset of its steps (hidden options), so
they take seconds: they prove what a GPU machine's one 10-minute command depends on (the deadline, the
kills, proof.json rewritten per step, at most 6 files) and that without a GPU it says "NOT PROVEN".
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import torch

from tools import gpu_proof

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "gpu_proof.py"
H200_Q = REPO / "tests" / "fixtures" / "nvidia-smi" / "q-h200-580.173.02.txt"
ALLOWED_FILES = {"proof.json", "nvidia-smi-q.txt", "verify-report.json", "logs.tgz"}
H100 = "NVIDIA H100 80GB HBM3"
DEADLINE_S = 5  # the rehearsal's deadline: the fake nvidia-smi steps finish well before it, even on a busy host


def cpu_only() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CPU rehearsal; on a GPU machine the proof itself is the test")


# --- bands -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, label", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM (80GB HBM3)"),
    ("NVIDIA H200", "H200 SXM (141GB HBM3e)"),
    ("NVIDIA H100 PCIe", None),  # 350 W, 2 TB/s: not the SXM band
    ("NVIDIA H100 NVL", None),
    ("NVIDIA H100", None),  # the plain SKU: which memory, which power?
    ("NVIDIA H200 NVL", None),  # 600 W
    ("NVIDIA GH200 480GB", None),
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None),
    ("NVIDIA A100-SXM4-80GB", None),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_band_for_a_gpu_name(name, label):
    band, why = gpu_proof.band_for(name)
    assert (band.label if band else None) == label
    if band is None:
        assert name in why and ("no band" in why), why  # recorded in words, never a silent pass
    else:
        assert why == ""


def test_bands_are_the_published_figures():
    h100, _ = gpu_proof.band_for("NVIDIA H100 80GB HBM3")
    h200, _ = gpu_proof.band_for("NVIDIA H200")
    assert h100 is not None and h200 is not None
    assert h100.bf16_tflops == (600.0, 1000.0) and h100.memory_gbps == (2500.0, 3350.0)
    assert h200.memory_gbps[0] >= 3800.0 and h200.memory_gbps[1] == 4800.0
    assert "989.4" in h100.source and "3.35 TB/s" in h100.source and "4.8 TB/s" in h200.source


# --- assertions on reports written by hand -----------------------------------------------------------------

VERIFY_ASSERTIONS = ("verify-every-check", "verify-check-processes", "cuda-sm90-native", "cudnn-three-cases",
                     "train-bf16", "compile-cuda", "perf-bf16-band", "perf-copy-band", "perf-not-above-peak")


def _check(name: str, status: str = "pass", reason: str = "ok", key_figure: str = "",
           **figures: Any) -> Dict[str, Any]:
    return {"name": name, "status": status, "reason": reason, "key_figure": key_figure, "figures": figures}


def _report(checks: List[Dict[str, Any]], mode: str = "fork") -> Dict[str, Any]:
    return {"fingerprint": {"runner": {"check_processes": mode, "why": ""}}, "checks": checks,
            "summary": {"exit_code": 0}}


def gpu_verify_report(gpu: str = H100, bf16: float = 798.0, copy: float = 3010.0, toolchain: str = "skip",
                      arch_list: Optional[List[str]] = None) -> Dict[str, Any]:
    """verify --perf --require-gpu as it should read on an H100 SXM (figures from the review's spec)."""
    checks = {name: _check(name) for name in gpu_proof.EXPECTED_CHECKS}
    checks["cuda"] = _check("cuda", devices=[{"name": gpu, "capability": "9.0", "sm": "sm_90"}],
                            arch_list=arch_list or ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
    checks["cudnn"] = _check("cudnn", **dict.fromkeys(gpu_proof.CONV_CASES, 1e-06))
    checks["train"] = _check("train", device="cuda", precision="bfloat16", grad_scaler=False)
    checks["compile"] = _check("compile", device="cuda")
    checks["toolchain"] = _check("toolchain", toolchain, "not a devel image: no CUDA compiler here")
    checks["perf"] = _check("perf", device=gpu, peak_table_entry="H100 SXM", tf32_tflops=380.0, bf16_tflops=bf16,
                            fp16_tflops=790.0, memory_gbps=copy, h2d_pinned_gbps=52.0,
                            tf32_tflops_pct_of_peak=76.8, bf16_tflops_pct_of_peak=round(100 * bf16 / 989.4, 1),
                            fp16_tflops_pct_of_peak=79.8, memory_gbps_pct_of_peak=round(100 * copy / 3350, 1))
    return _report(list(checks.values()))


def evidence(tmp_path: Path, reports: Dict[str, Dict[str, Any]], gpu: Optional[bool] = True,
             toolkit: Optional[str] = None, steps: Optional[Dict[str, Dict[str, Any]]] = None) -> gpu_proof.Evidence:
    (tmp_path / "reports").mkdir(exist_ok=True)
    for name, report in reports.items():
        (tmp_path / "reports" / f"{name}.json").write_text(json.dumps(report))
    records = {name: {"name": name, "status": "exited", "rc": 0, "seconds": 1.0, "why": ""} for name in reports}
    records.update(steps or {})
    return gpu_proof.Evidence(tmp_path, records, gpu, "" if gpu else "no GPU: a CPU build", toolkit, H100, {})


def outcomes(ev: gpu_proof.Evidence) -> Dict[str, Dict[str, Any]]:
    return {result["name"]: result for result in gpu_proof.assess(ev)}


def test_a_good_h100_report_holds_every_verify_assertion(tmp_path):
    found = outcomes(evidence(tmp_path, {"verify": gpu_verify_report()}))
    for name in VERIFY_ASSERTIONS:
        assert found[name]["outcome"] == "held" and found[name]["counts"], found[name]
    assert "toolchain skipped" in found["verify-every-check"]["detail"]
    assert "798 TFLOP/s is within the H100 SXM (80GB HBM3) band 600-1000" in found["perf-bf16-band"]["detail"]


@pytest.mark.parametrize("report, toolkit, assertion, words", [
    (gpu_verify_report(bf16=1500.0), None, "perf-bf16-band", "above the H100 SXM (80GB HBM3) band 600-1000"),
    (gpu_verify_report(bf16=1500.0), None, "perf-not-above-peak", "a timing error"),
    (gpu_verify_report(bf16=450.0), None, "perf-bf16-band", "below the H100 SXM (80GB HBM3) band"),
    (gpu_verify_report(copy=3600.0), None, "perf-copy-band", "past the datasheet"),
    (gpu_verify_report(gpu="NVIDIA H200", copy=3000.0), None, "perf-copy-band", "below the H200 SXM"),
    (gpu_verify_report(), "13.0", "verify-every-check", "toolchain SKIP"),  # a devel image must have nvcc
    (gpu_verify_report(arch_list=["sm_80", "compute_90"]), None, "cuda-sm90-native", "covered ptx, not native"),
])
def test_a_bad_report_fails_the_assertion_in_words(tmp_path, report, toolkit, assertion, words):
    found = outcomes(evidence(tmp_path, {"verify": report}, toolkit=toolkit))
    assert found[assertion]["outcome"] == "failed" and found[assertion]["counts"], found[assertion]
    assert words in found[assertion]["detail"], found[assertion]["detail"]


def test_a_check_that_skips_or_lacks_a_case_fails(tmp_path):
    report = gpu_verify_report()
    by_name = {check["name"]: check for check in report["checks"]}
    by_name["cudnn"]["figures"].pop("conv_autocast_bf16_rel_error")
    by_name["nccl"].update(status="skip", reason="no GPU")
    found = outcomes(evidence(tmp_path, {"verify": report}))
    assert found["cudnn-three-cases"]["outcome"] == "failed" and "2 of 3" in found["cudnn-three-cases"]["detail"]
    assert found["verify-every-check"]["outcome"] == "failed"
    assert "nccl SKIP: no GPU" in found["verify-every-check"]["detail"]


def test_a_gpu_without_a_band_is_recorded_and_does_not_count(tmp_path):
    found = outcomes(evidence(tmp_path, {"verify": gpu_verify_report(gpu="NVIDIA A100-SXM4-80GB")}))
    for name in ("perf-bf16-band", "perf-copy-band"):
        assert found[name]["outcome"] == "no-band" and found[name]["counts"] is False
        assert "no band for 'NVIDIA A100-SXM4-80GB'" in found[name]["detail"]
    assert found["perf-not-above-peak"]["outcome"] == "held"


def test_without_a_gpu_the_gpu_assertions_are_not_applicable(tmp_path):
    found = outcomes(evidence(tmp_path, {"verify": gpu_verify_report()}, gpu=False))
    assert found["gpu-visible"]["outcome"] == "no-gpu"
    for name in VERIFY_ASSERTIONS:
        if name != "verify-check-processes":  # how checks start is no GPU matter: judged
            assert found[name]["outcome"] == "no-gpu" and found[name]["counts"], found[name]
            assert found[name]["detail"].startswith("not applicable: no GPU")
    assert found["verify-check-processes"]["outcome"] == "held"


def _all_reports() -> Dict[str, Dict[str, Any]]:
    return {
        "verify": gpu_verify_report(),
        "drill-hang": _report([_check("cuda", "fail", "timed out after 10 s (killed)", "timeout")]),
        "drill-fail": _report([
            _check("train", "fail", "[fault injected: random-labels] loss did not fall", device="cuda"),
            _check("autograd", "fail", "the check's process was killed by SIGSEGV before reporting", "crashed")]),
        "torchrun": _report([_check("distributed", "warn", "1 rank: NCCL ran", backend="nccl", world_size=1)]),
        "exec-mode": _report([_check("cudnn"), _check("nccl"), _check("train", device="cuda"), _check("compile")],
                             mode="exec"),
    }


def test_a_proof_where_everything_held_passes_and_exits_0(tmp_path):
    """The assertions can all hold at once: a run on a good H100 is PROVEN (what the CPU can never show)."""
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    (work / "logs").mkdir(parents=True)
    proof = gpu_proof.Proof(out, work, 420.0, 10.0, {"toolkit": None})
    ev = evidence(work, _all_reports(), steps={"drill-hang": {"status": "exited", "rc": 1, "seconds": 14.0,
                                                              "why": ""}})
    (work / "reports" / "pytest-gpu.xml").write_text('<testsuites><testsuite tests="3" skipped="0" failures="0" '
                                                     'errors="0"/></testsuites>')
    proof.steps = {**ev.steps, "pytest": {"status": "exited", "rc": 0, "why": ""}}
    for step in gpu_proof.plan(work, sys.executable, work / "manifest.json"):
        proof.steps.setdefault(step.name, {"name": step.name, "status": "exited", "rc": 0, "why": ""})
    proof.facts["nvidia_smi"] = {"driver": "580.159.04", "name": H100, "compute_mode": "Default",
                                 "mig_mode": "Disabled"}
    proof.facts["torch"] = {"torch": "2.11.0+cu130", "cuda": "13.0", "cuda_available": True, "device_count": 1,
                            "devices": [{"name": H100, "capability": "9.0"}]}
    proof.absorb("verify")
    proof.state = "finished"
    summary = proof.write()
    assert summary["passed"] is True, summary["failed"]
    assert summary["verdict"].startswith("PROVEN: all ")
    assert summary["perf"]["bf16_tflops"] == 798.0 and summary["perf"]["band"]["label"].startswith("H100 SXM")
    assert (out / "verify-report.json").is_file() and json.loads((out / "proof.json").read_text())["passed"]
    assert summary["summary"]["driver"] == "580.159.04" and summary["summary"]["compute_capability"] == "9.0"


def _full_gpu_report(toolkit: Optional[str]) -> Dict[str, Any]:
    """A whole `verify --perf --require-gpu` report as tests/test_verify_gpu.py reads it from the proof."""
    from .test_verify_run import EVERY_CHECK

    report = gpu_verify_report()
    by_name = {check["name"]: check for check in report["checks"]}
    by_name["nccl"]["figures"].update(backend="nccl", allreduce_values=[3.0], allreduce_expected=3.0)
    by_name["autograd"]["figures"]["gpu_vs_cpu_rel_error"] = 1e-7
    by_name["shm"]["figures"]["pin_memory"] = True
    report["checks"] = [by_name.get(name) or _check(name) for name in EVERY_CHECK]
    by_name["cuda"]["figures"]["device_count"] = 1
    report["fingerprint"].update(gpus=[{"index": 0, "name": H100, "capability": "9.0"}],
                                 manifest={"tag": "2.11.0-cuda13.0", "toolkit": toolkit})
    return report


def test_the_gpu_tests_allow_a_toolchain_skip_only_without_a_promised_toolkit():
    """Review defect #2: tests/test_verify_gpu.py, run by the proof on its report, on reports written by hand."""
    from . import test_verify_gpu

    report = _full_gpu_report(toolkit=None)
    test_verify_gpu.test_every_check_passes_on_the_gpu(report)
    test_verify_gpu.test_gpu_checks_used_the_gpu(report)
    test_verify_gpu.test_perf_figures_are_possible(report)
    with pytest.raises(AssertionError, match="toolchain"):
        test_verify_gpu.test_every_check_passes_on_the_gpu(_full_gpu_report(toolkit="13.0"))
    too_fast = _full_gpu_report(toolkit=None)
    next(c for c in too_fast["checks"] if c["name"] == "perf")["figures"]["memory_gbps"] = 3400.0
    with pytest.raises(AssertionError, match="outside the H100 SXM"):
        test_verify_gpu.test_perf_figures_are_possible(too_fast)


def test_the_plan_fits_the_gpu_machine(tmp_path):
    steps = {step.name: step for step in gpu_proof.plan(tmp_path, "python3", tmp_path / "manifest.json")}
    torchrun = steps["torchrun"].command
    assert "--standalone" in torchrun and "--nproc-per-node=1" in torchrun and "nccl" in torchrun
    assert "--require-gpu" in torchrun
    assert {"--perf", "--require-gpu", "--manifest"} <= set(steps["verify"].command)
    assert steps["drill-hang"].env == {"VERIFY_FAULT": "cuda:hang-with-context"}
    assert steps["drill-fail"].env == {"VERIFY_FAULT": "train:random-labels,autograd:crash"}
    assert steps["exec-mode"].env["VERIFY_LIBCUDA"].endswith("libcuda-stub.so")
    assert "addopts=" in steps["pytest"].command  # pytest.ini's -n auto needs xdist, which a GPU host may lack
    assert gpu_proof.DEFAULT_DEADLINE_S + gpu_proof.KILL_GRACE_S < 600


def test_the_host_manifest_drops_what_only_the_image_has(tmp_path):
    dropped = gpu_proof.host_manifest(gpu_proof.IMAGE_MANIFEST, tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    assert "packages" in dropped["dropped"] and "packages" not in data and "python" not in data
    assert data["torch"] == "2.11.0" and data["cuda"] == "13.0" and "sm_90" in data["archs"]


def test_nvidia_smi_q_is_read_for_the_facts():
    facts = gpu_proof.parse_smi_q(H200_Q.read_text())
    assert facts["driver"] == "580.173.02" and facts["name"] == "NVIDIA H200"
    assert facts["compute_mode"] == "Default" and facts["mig_mode"] == "Disabled"


# --- the step runner ---------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _dies(pid: int, within_s: float = 3.0) -> bool:
    """Whether `pid` is gone (or a zombie) within `within_s`: SIGKILL is delivered, not instantaneous."""
    end = time.monotonic() + within_s
    while _alive(pid):
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)
    return True


def _child_pid(log: Path) -> int:
    for _ in range(50):
        text = log.read_text() if log.exists() else ""
        if text.startswith("child "):
            return int(text.split()[1])
        time.sleep(0.05)
    raise AssertionError(f"no child pid in {log}")


def test_a_step_past_its_limit_is_killed_with_the_children_that_left_its_session(tmp_path):
    step = gpu_proof.Step("hangs", [sys.executable, "-c", gpu_proof.HANG_SCRIPT], limit_s=1.5)
    record = gpu_proof.run_step(step, tmp_path, given_s=1.5, grace_s=5)
    assert record["status"] == "timeout" and record["rc"] == -signal.SIGKILL, record
    assert "ran past its limit of 1.5 s" in record["why"]
    assert _dies(_child_pid(tmp_path / "hangs.out"))  # like torchrun's workers: own session, killed too


def test_a_step_cut_by_the_deadline_says_so(tmp_path):
    step = gpu_proof.Step("long", [sys.executable, "-c", "import time; time.sleep(60)"], limit_s=60)
    record = gpu_proof.run_step(step, tmp_path, given_s=0.5, grace_s=5)
    assert record["status"] == "deadline" and "cut at the proof's deadline" in record["why"], record


def test_what_a_finished_step_left_running_is_killed(tmp_path):
    """Its orphans come back to the proof, a subreaper (in a process of its own here, not pytest's)."""
    leaves = ("import subprocess, sys\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
              "print('child', child.pid, flush=True)\n")
    runner = ("import json, sys\nfrom pathlib import Path\nfrom tools import gpu_proof\n"
              "subreaper = gpu_proof.become_subreaper()\n"
              "step = gpu_proof.Step('leaves', [sys.executable, '-c', sys.argv[1]], 20)\n"
              "print(json.dumps(gpu_proof.run_step(step, Path(sys.argv[2]), 20, 5, subreaper)))\n")
    done = subprocess.run([sys.executable, "-c", runner, leaves, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    child = _child_pid(tmp_path / "leaves.out")
    assert record["status"] == "exited" and record["rc"] == 0 and record["left_behind"] == [child], record
    assert "left 1 process(es) running" in record["why"] and _dies(child)


def test_a_process_that_survives_sigkill_is_recorded_unkillable_after_a_bounded_wait(tmp_path, monkeypatch):
    """A process in uninterruptible sleep ignores SIGKILL; here the kill is withheld to stand in for that."""
    real_kill = os.kill
    monkeypatch.setattr(gpu_proof.os, "killpg", lambda pid, sig: None)
    monkeypatch.setattr(gpu_proof.os, "kill", lambda pid, sig: None)
    step = gpu_proof.Step("stuck", [sys.executable, "-c", "import time; time.sleep(60)"], limit_s=0.5)
    started = time.monotonic()
    record = gpu_proof.run_step(step, tmp_path, given_s=0.5, grace_s=0.5)
    monkeypatch.undo()
    try:
        assert time.monotonic() - started < 5
        assert record["status"] == "unkillable" and "still alive 0.5 s after SIGKILL" in record["why"], record
        assert record["rc"] is None and record["unkillable"] == [record["pid"]]
    finally:
        real_kill(record["pid"], signal.SIGKILL)


def test_steps_extend_pythonpath_and_drop_a_stray_fault(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/opt/wheels")
    monkeypatch.setenv("VERIFY_FAULT", "cuda:crash")
    env = gpu_proof.step_environment({"X": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/opt/wheels"]
    assert "VERIFY_FAULT" not in env and env["X"] == "1"


# --- the script, rehearsed on the CPU ----------------------------------------------------------------------

def _fake_nvidia_smi(tmp_path: Path) -> Path:
    """nvidia-smi as an H200 with driver 580.173.02 answers (a real capture for -q)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\ncase \"$1\" in\n  -q) cat '{H200_Q}' ;;\n"
                    "  --query-gpu=*) echo '580.173.02, NVIDIA H200, 9.0, Default, Disabled, 143771 MiB, 700.00 W, "
                    "1980 MHz, P0' ;;\n  *) exit 2 ;;\nesac\n")
    fake.chmod(0o755)
    return bin_dir


def _files(out: Path) -> set:
    names = {path.name for path in out.iterdir()}
    assert len(names) <= 6 and names <= ALLOWED_FILES, names
    return names


def _archive(out: Path) -> Dict[str, bytes]:
    with tarfile.open(out / "logs.tgz") as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers() if member.isfile()}


def _start(out: Path, *args: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _watch(out: Path, proc: subprocess.Popen, step: str, limit_s: float = 30) -> Dict[str, Any]:
    """proof.json as it is while `step` runs: every read must parse (it is replaced, never half-written)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "proof.json").exists():
            data = json.loads((out / "proof.json").read_text())
            if {s["name"]: s for s in data["steps"]}[step]["status"] == "running":
                return data
        time.sleep(0.02)
    raise AssertionError(f"proof.json never showed {step} running: {proc.communicate(timeout=30)[0]}")


def test_rehearsal_a_hang_is_cut_at_the_deadline_and_proof_json_is_written_per_step(tmp_path):
    cpu_only()
    out = tmp_path / "out"
    bin_dir = _fake_nvidia_smi(tmp_path)
    started = time.monotonic()
    proc = _start(out, "--steps", "nvidia-smi,verify,drill-hang,torchrun", "--rehearse-hang", "verify",
                  "--deadline", str(DEADLINE_S), "--kill-grace", "3",
                  env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    during = _watch(out, proc, "verify")
    stdout = proc.communicate(timeout=60)[0]
    elapsed = time.monotonic() - started
    print(f"rehearsal with a hang: {elapsed:.1f} s wall")
    assert proc.returncode == 1, stdout
    assert elapsed < DEADLINE_S + 3 + 10, stdout  # the deadline, the kill grace, the writing

    # While the hung step ran, proof.json already listed the steps before it, and the fixture was there.
    steps = {s["name"]: s for s in during["steps"]}
    assert during["state"] == "running" and during["verdict"].startswith("RUNNING")
    assert steps["nvidia-smi"]["status"] == "exited" and steps["nvidia-smi-query"]["status"] == "exited"
    assert steps["verify"]["given_s"] <= DEADLINE_S and steps["drill-hang"]["status"] == "pending"
    assert during["summary"]["driver"] == "580.173.02" and during["summary"]["gpu_name"] == "NVIDIA H200"

    proof = json.loads((out / "proof.json").read_text())
    steps = {s["name"]: s for s in proof["steps"]}
    assert proof["state"] == "finished" and proof["deadline_passed"] is True and proof["passed"] is False
    assert steps["verify"]["status"] == "deadline" and steps["verify"]["rc"] == -signal.SIGKILL
    assert proof["cut"] == [f"verify: {steps['verify']['why']}"] and "cut at the proof's deadline" in proof["cut"][0]
    assert proof["not_run"] == ["drill-hang", "torchrun"]
    assert all(f"deadline of {DEADLINE_S} s had passed" in steps[name]["why"] for name in proof["not_run"])
    assert steps["facts"]["status"] == "not-selected"
    verify_based = {a["name"]: a for a in proof["assertions"]}["verify-every-check"]
    assert verify_based["outcome"] == "failed" and "cut at the proof's deadline" in verify_based["detail"]
    assert proof["facts"]["nvidia_smi"]["mig_mode"] == "Disabled" and proof["summary"]["compute_mode"] == "Default"

    assert _files(out) == {"proof.json", "nvidia-smi-q.txt", "logs.tgz"}
    assert (out / "nvidia-smi-q.txt").read_text() == H200_Q.read_text()
    logs = _archive(out)
    assert {"logs/nvidia-smi.out", "logs/nvidia-smi-query.out", "logs/verify.out", "logs/verify.err",
            "manifest-host.json"} <= set(logs)
    child = int(logs["logs/verify.out"].split()[1])
    assert _dies(child), "the hung step's child (own session) outlived the proof"


def test_rehearsal_without_a_gpu_says_not_proven(tmp_path):
    cpu_only()
    if shutil.which("nvidia-smi"):
        pytest.skip("asserts what a machine without nvidia-smi records")
    out = tmp_path / "out"
    started = time.monotonic()
    proc = _start(out, "--steps", "nvidia-smi,facts,drill-fail", "--deadline", "60",
                  env={"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1"})
    stdout = proc.communicate(timeout=90)[0]
    print(f"rehearsal without a GPU: {time.monotonic() - started:.1f} s wall")
    assert proc.returncode == 1, stdout
    proof = json.loads((out / "proof.json").read_text())
    assert proof["verdict"].startswith("NOT PROVEN: no GPU: torch ") and "not applicable" in proof["verdict"]
    assert "NOT PROVEN: no GPU" in stdout and proof["passed"] is False
    found = {a["name"]: a for a in proof["assertions"]}
    for name in ("gpu-visible", "facts", "verify-every-check", "perf-bf16-band", "drill-random-labels", "exec-mode",
                 "torchrun-nccl"):
        assert found[name]["outcome"] == "no-gpu", found[name]
    assert found["drill-autograd-crash"]["outcome"] == "held", found["drill-autograd-crash"]  # a real drill ran
    assert {f["assertion"] for f in proof["failed"]} >= {"gpu-visible", "verify-every-check"}

    assert proof["facts"]["nvidia_smi"]["problem"].startswith("nvidia-smi not found on PATH")
    assert proof["summary"]["tf32_variables"] == {"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1",
                                                  "NVIDIA_TF32_OVERRIDE": None}
    assert proof["summary"]["torch"] == torch.__version__ and proof["summary"]["cuda"] == torch.version.cuda
    assert {s["name"]: s for s in proof["steps"]}["drill-fail"]["status"] == "exited"
    assert _files(out) == {"proof.json", "logs.tgz"}  # no nvidia-smi: no fixture
    logs = _archive(out)
    assert {"logs/facts.out", "logs/drill-fail.out", "logs/drill-fail.err", "reports/drill-fail.json"} <= set(logs)


def test_rehearsal_sigterm_kills_the_running_step_and_still_writes_the_proof(tmp_path):
    cpu_only()
    out = tmp_path / "out"
    proc = _start(out, "--steps", "verify,torchrun", "--rehearse-hang", "verify", "--kill-grace", "3")
    _watch(out, proc, "verify")
    time.sleep(0.3)  # let the hung step start its child
    proc.send_signal(signal.SIGTERM)
    stdout = proc.communicate(timeout=30)[0]
    assert proc.returncode == 1, stdout
    proof = json.loads((out / "proof.json").read_text())
    steps = {s["name"]: s for s in proof["steps"]}
    assert proof["state"] == "interrupted" and proof["verdict"].startswith("NOT PROVEN: interrupted (SIGTERM)")
    assert steps["verify"]["status"] == "interrupted" and steps["torchrun"]["status"] == "not-run"
    logs = _archive(out)
    assert _dies(int(logs["logs/verify.out"].split()[1]))
