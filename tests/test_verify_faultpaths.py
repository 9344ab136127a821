"""verify's GPU paths when something goes wrong: the defects of the 2026-12-06 GPU code-path review.

Each test here failed on the code before its fix. Expected answers are written from NVIDIA's and
CPython's documented behaviour, not computed by the code under test. No GPU is needed: torch's CUDA
queries are replaced where a test needs a GPU to be "there", and stand-in processes play the hung ones.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

from verify import forkserver, perfmath, ranks, runner
from verify.catalog import CheckSpec
from verify.checks import _common, cuda, driver, perf
from verify.context import CheckContext
from verify.result import CheckResult, Findings, Status

REPO = Path(__file__).resolve().parent.parent


# --- the runner: a check that never exits, and a result written before a hang -------------------------

class _SilentForkServer:
    """Answers "started" for every request and never "exited": a check stuck in the kernel after SIGKILL."""

    def __init__(self) -> None:
        self.sent: List[Dict[str, Any]] = []
        self._answers: List[Dict[str, Any]] = []

    def send(self, message: Dict[str, Any]) -> None:
        self.sent.append(message)
        self._answers.append({"started": message["id"], "pid": 999_999})

    def receive(self, timeout_s: float) -> List[Dict[str, Any]]:
        answers, self._answers = self._answers, []
        if not answers:
            time.sleep(min(timeout_s, 0.05))
        return answers


def test_a_check_that_survives_sigkill_is_reported_unkillable_not_waited_for(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "KILL_GRACE_S", 0.3)
    killed: List[int] = []
    monkeypatch.setattr(runner, "_kill", lambda job: killed.append(job.ident))
    finished: List[CheckResult] = []
    started = time.monotonic()
    runner._schedule(_SilentForkServer(), [CheckSpec("cuda", "stuck")], runner.RunOptions(timeout_s=0.2), 1,
                     str(tmp_path), {}, finished.append)
    assert time.monotonic() - started < 5
    assert killed == [1]
    (result,) = finished
    assert result.status is Status.FAIL
    assert "did not exit 0.3 s after SIGKILL" in result.reason and "driver hung?" in result.reason
    assert result.key_figure == "unkillable"


def test_a_result_written_before_the_time_limit_keeps_its_verdict(tmp_path):
    """A check that reported PASS, then blocked in teardown until killed, passed; the kill is noted."""
    result_path = tmp_path / "nccl.json"
    result_path.write_text(json.dumps(CheckResult("nccl", Status.PASS, "exact all-reduce", 1.0).to_dict()))
    job = runner._Job(1, CheckSpec("nccl", "x"), 5.0, str(result_path), str(tmp_path / "nccl.log"),
                      time.monotonic() - 6, pid=1234, timed_out=True)
    collected = runner._collect(job, -9)
    assert collected.status is Status.PASS
    assert collected.reason.startswith("exact all-reduce (its process reported, then did not exit")
    assert collected.figures["killed_after_reporting"] is True


def test_exec_mode_check_process_leaves_without_interpreter_teardown(tmp_path):
    """Teardown runs atexit handlers and destructors (a process group's can block); after the result is
    written the fresh-interpreter check ends at once. The stand-in teardown here sleeps 60 s."""
    result = tmp_path / "result.json"
    request = {"id": 1, "name": "no_such_check", "result": str(result), "log": str(tmp_path / "log"),
               "manifest": None, "require_gpu": False, "timeout_s": 30.0, "backend": None}
    program = ("import atexit, runpy, sys, time; atexit.register(time.sleep, 60); "
               "sys.argv = ['check_process', sys.argv[1]]; runpy.run_module('verify.check_process', run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VERIFY_FAULT", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", program, json.dumps(request)], env=env, capture_output=True,
                          text=True, timeout=45)
    assert time.monotonic() - started < 30, "teardown ran"
    assert done.returncode == 0, done.stderr
    assert json.loads(result.read_text())["status"] == "fail"  # no such check: a written failure, then exit


# --- fork only from a process with one thread --------------------------------------------------------

def test_python_threads_counts_threads_besides_the_main_one():
    import threading

    before = forkserver.python_threads()
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        assert forkserver.python_threads() == before + 1
    finally:
        release.set()
        worker.join()


def test_checks_are_not_forked_from_a_process_with_python_threads(monkeypatch):
    monkeypatch.setattr(forkserver, "cuda_driver_initialised", lambda: None)
    monkeypatch.setattr(forkserver, "python_threads", lambda: 2)
    ready = forkserver._preload([])
    assert ready["mode"] == "exec"
    assert "started 2 other Python thread(s)" in ready["why"] and "fresh interpreter" in ready["why"]
    monkeypatch.setattr(forkserver, "python_threads", lambda: 0)
    assert forkserver._preload([])["mode"] == "fork"


# --- CUDA_VISIBLE_DEVICES="" is "no GPU made visible", not a driver failure ------------------------------

@pytest.mark.parametrize("value, hidden", [("", "CUDA_VISIBLE_DEVICES=''"), ("-1", "CUDA_VISIBLE_DEVICES='-1'"),
                                           ("NoDevFiles", "CUDA_VISIBLE_DEVICES='NoDevFiles'"), ("0", None),
                                           ("GPU-8f6b", None)])
def test_which_visible_device_lists_hide_every_gpu(value, hidden):
    assert _common.visibility_hides_every_gpu({"CUDA_VISIBLE_DEVICES": value}) == hidden
    assert _common.visibility_hides_every_gpu({}) is None


def test_driver_check_with_every_gpu_hidden_skips_instead_of_failing(monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 580.65.06\n")
    smi.chmod(0o755)
    monkeypatch.setattr(driver, "PROC_VERSION", str(tmp_path / "no-proc-version"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    outcome = driver.run(CheckContext())
    assert outcome.status is Status.SKIP, outcome.reason
    assert outcome.reason.startswith("no GPU made visible: CUDA_VISIBLE_DEVICES='' hides every GPU")
    assert driver.run(CheckContext(require_gpu=True)).status is Status.FAIL  # --require-gpu still insists


# --- MIG on, no MIG device ---------------------------------------------------------------------------------

MIG_ON = """\
==============NVSMI LOG==============

Driver Version                            : 580.95.05
CUDA Version                              : 13.0

Attached GPUs                             : 1
GPU 00000000:07:00.0
    Product Name                          : NVIDIA A100-SXM4-80GB
    MIG Mode
        Current                           : {mode}
        Pending                           : {mode}
"""


@pytest.mark.parametrize("mode, visible, said", [("Enabled", 0, True), ("Enabled", 1, False),
                                                 ("Disabled", 0, False)])
def test_mig_enabled_without_a_mig_device_is_said_in_words(mode, visible, said):
    from verify import nvsmi

    gpus = nvsmi.parse_q(MIG_ON.format(mode=mode))["gpus"]
    message = _common.mig_without_device(gpus, visible_count=visible)
    if said:
        assert message is not None and message.startswith("NVIDIA A100-SXM4-80GB has MIG mode enabled but no MIG")
        assert "MIG-<uuid>" in message
    else:
        assert message is None


# --- a GPU this build has no kernels for: one FAIL (cuda), the rest say "not covered (see cuda)" ------------

def _pretend_gpu(monkeypatch, capability, arch_list, name="Tesla P100-PCIE-16GB") -> None:
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: name)


def test_a_gpu_without_kernels_in_this_build_is_unusable_for_the_other_checks(monkeypatch):
    # NVIDIA: a cubin runs on GPUs of its major version with an equal or higher minor; PTX is JIT-compiled
    # for any higher capability. sm_60 (Pascal) gets nothing from sm_75..sm_120 cubins without PTX.
    _pretend_gpu(monkeypatch, (6, 0), ["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"])
    reason = _common.gpu_unusable_reason()
    assert reason == "GPU 0 (Tesla P100-PCIE-16GB, sm_60) is not covered by this build's kernels (see cuda)"


@pytest.mark.parametrize("capability, arch_list", [
    ((8, 6), ["sm_80", "sm_90"]),          # sm_86 runs the sm_80 cubin (same major, lower minor)
    ((8, 9), ["sm_50", "sm_80", "compute_80"]),
    ((10, 3), ["sm_90", "compute_90"]),     # PTX for 9.0 JIT-compiles for 10.3
    ((9, 0), []),                           # nothing stated: the kernels themselves will tell
])
def test_covered_gpus_are_usable(monkeypatch, capability, arch_list):
    _pretend_gpu(monkeypatch, capability, arch_list, name="NVIDIA GPU")
    assert _common.gpu_unusable_reason() is None


def test_perf_skips_an_uncovered_gpu_pointing_at_cuda(monkeypatch):
    _pretend_gpu(monkeypatch, (6, 0), ["sm_75", "sm_80"])
    outcome = perf.run(CheckContext())
    assert outcome.status is Status.SKIP and outcome.reason.endswith("(see cuda)")


# --- perf: above the published peak is a timing bug -------------------------------------------------------

H100_SXM = perfmath.lookup_peak("NVIDIA H100 80GB HBM3")


def _measured(bf16: float, memory: float, tf32: float = 400.0) -> Dict[str, Any]:
    return {"tf32_tflops": tf32, "bf16_tflops": bf16, "fp16_tflops": bf16, "memory_gbps": memory}


def test_perf_fails_a_figure_above_the_published_peak():
    # H100 SXM: 989.4 TFLOP/s dense bf16 (H100 whitepaper); 1480 is 150 %: a timing bug, not a fast GPU.
    found = Findings()
    perf.judge(found, _measured(bf16=1480.0, memory=2900.0), H100_SXM)
    outcome = found.outcome("ok")
    assert outcome.status is Status.FAIL
    assert "bf16 1480 is 150% of the H100 SXM's 989.4" in outcome.reason and "timing is wrong" in outcome.reason


@pytest.mark.parametrize("bf16, memory, status", [
    (790.0, 2900.0, Status.PASS),    # ~80 % and ~87 %: what an H100 SXM measures
    (1030.0, 2900.0, Status.PASS),   # 104 %: boost clocks, within 5 %
    (400.0, 2900.0, Status.WARN),    # 40 %: slow
])
def test_perf_bands_around_the_peak(bf16, memory, status):
    found = Findings()
    perf.judge(found, _measured(bf16=bf16, memory=memory), H100_SXM)
    assert found.outcome("ok").status is status


def test_slow_tf32_names_nvidia_tf32_override(monkeypatch):
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    found = Findings()
    perf.judge(found, _measured(bf16=800.0, memory=2900.0, tf32=60.0), H100_SXM)  # tf32 at the fp32 rate
    outcome = found.outcome("ok")
    assert outcome.status is Status.WARN and "NVIDIA_TF32_OVERRIDE=0 is set" in outcome.reason


def test_forced_tf32_is_named_instead_of_wrong_results(monkeypatch):
    monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1")
    assert cuda._tf32_forced() == "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1"
    monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "0")
    assert cuda._tf32_forced() == ""


def test_gb200_has_its_own_peak_row_and_b200_keeps_its_own():
    # GB200 NVL72 datasheet, per superchip (2 GPUs): 10 PFLOPS bf16 with sparsity, 16 TB/s -> per GPU dense
    # 2500 TFLOP/s and 8000 GB/s. HGX B200: 2.25 PFLOPS dense bf16, 7.7 TB/s per GPU.
    gb200 = perfmath.lookup_peak("NVIDIA GB200")
    b200 = perfmath.lookup_peak("NVIDIA B200")
    assert gb200 is not None and (gb200.label, gb200.bf16_tflops, gb200.memory_gbps) == ("GB200", 2500.0, 8000.0)
    assert b200 is not None and (b200.label, b200.bf16_tflops, b200.memory_gbps) == ("B200", 2250.0, 7700.0)


# --- NCCL with one rank proves no transport -------------------------------------------------------------------

def test_one_rank_nccl_is_a_warning_that_no_transport_was_exercised():
    record = {"rank": 0, "host": "node-0", "local_rank": 0, "device": "cuda:0", "gpu_missing": None, "error": None,
              "contributed": 1.0, "value": 1.0, "exact": True, "compute_s": 0.05, "times_s": {}}
    outcome = ranks.summarize({0: record}, 1, "nccl", waited_s=30)
    assert outcome.status is Status.WARN, outcome.reason
    assert "no transport" in outcome.reason and "2 or more ranks" in outcome.reason
    assert ranks.summarize({0: dict(record, device="cpu")}, 1, "gloo", waited_s=30).status is Status.PASS


def test_a_hang_holding_a_cuda_context_is_killed_and_reported(tmp_path):
    """The GPU proof's drill: cuda hangs after its context exists (on CPU: where it would); the runner kills it."""
    env = {key: value for key, value in os.environ.items() if key != "PYTORCH_CUDA_MANIFEST"}
    env["VERIFY_FAULT"] = "cuda:hang-with-context"
    report = tmp_path / "report.json"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "verify", "--only", "cuda", "--timeout", "3", "--json", str(report)],
                   cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    (cuda_result,) = json.loads(report.read_text())["checks"]
    assert cuda_result["status"] == "fail" and cuda_result["reason"].startswith("timed out after 3 s"), cuda_result
    assert time.monotonic() - started < 60


def test_a_driver_below_the_floor_points_at_the_tag_finder(monkeypatch, tmp_path):
    """verify knows only its own image: a FAIL on the driver says where the newest working tag is named."""
    from verify.manifest import Manifest

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 550.54.15\n")  # CUDA 13.x needs >= 580 (CUDA Compatibility guide)
    smi.chmod(0o755)
    monkeypatch.setattr(driver, "PROC_VERSION", str(tmp_path / "no-proc-version"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    manifest = Manifest.from_dict({"tag": "2.14.1-cuda13.0", "cuda": "13.0", "driver_floor": "580",
                                   "toolkit_driver": "580.65.06"}, "manifest.json")
    outcome = driver.run(CheckContext(manifest=manifest))
    assert outcome.status is Status.FAIL
    assert "550.54.15" in outcome.reason and "`python build.py --preflight` there" in outcome.reason


def test_torch_that_does_not_import_is_reported_with_its_root_cause(monkeypatch):
    """A reason ends with the root cause: the library that failed to load, not only the import that wrapped it."""
    from verify.checks import environment

    class _BrokenTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                try:
                    raise OSError("libcudnn_graph.so.9: cannot open shared object file: No such file or directory")
                except OSError as err:
                    raise ImportError("torch/_C: failed to load the CUDA libraries") from err
            return

    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(sys, "meta_path", [_BrokenTorch(), *sys.meta_path])
    outcome = environment.run(CheckContext())
    assert outcome.status is Status.FAIL
    assert outcome.reason.startswith("torch does not import (ImportError: torch/_C: failed to load")
    assert outcome.reason.endswith("root cause: OSError: libcudnn_graph.so.9: cannot open shared object file: "
                                   "No such file or directory)")


def test_checks_run_on_the_cpu_beside_an_uncovered_gpu_say_why(monkeypatch):
    _pretend_gpu(monkeypatch, (6, 0), ["sm_75", "sm_80"])
    reason = _common.gpu_unusable_reason()
    assert _common.on_the_cpu_because(reason) == f"; {reason}"
    assert _common.on_the_cpu_because("no GPU: torch 2.13.0 is a CPU build") == ""
    assert _common.on_the_cpu_because(None) == ""
