"""verify on a machine with an NVIDIA GPU: every GPU check must pass for real, none may skip.

tools/gpu_proof.py runs these on the report of its own `verify --perf --require-gpu` run (GPU_PROOF_REPORT
names it), so verify does not run twice on a GPU machine's limited time. Without that variable, on a GPU
host, the module runs verify once itself.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Tuple

import pytest
import torch

from .test_verify_run import EVERY_CHECK, checks, run_verify

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parent.parent


@functools.cache
def _gpu_proof() -> ModuleType:
    """tools/gpu_proof.py by its path: a GPU host's site-packages may hold another top-level `tools`."""
    spec = importlib.util.spec_from_file_location("gpu_proof", REPO / "tools" / "gpu_proof.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_report(tmp_path_factory) -> Dict[str, Any]:
    given = os.environ.get(_gpu_proof().REPORT_ENV)
    if given:
        return json.loads(Path(given).read_text())  # the proof's run: asserted on, not repeated
    if not torch.cuda.is_available():
        pytest.skip("no GPU visible to torch (torch.cuda.is_available() is False)")
    done, data, _ = run_verify(tmp_path_factory.mktemp("verify-gpu"), "--require-gpu", "--perf")
    assert data, done.stdout + done.stderr
    return data


def _capability(found: Dict[str, Dict[str, Any]]) -> Tuple[int, int]:
    major, minor = found["cuda"]["figures"]["devices"][0]["capability"].split(".")
    return int(major), int(minor)


def test_every_check_passes_on_the_gpu(gpu_report):
    assert gpu_report["summary"]["exit_code"] == 0, gpu_report["summary"]
    found = checks(gpu_report)
    assert list(found) == EVERY_CHECK
    manifest = gpu_report["fingerprint"].get("manifest") or {}
    for name in EVERY_CHECK:
        if name == "toolchain" and not manifest.get("toolkit"):
            # A runtime image, or a host with only a driver, has no nvcc; only a devel image promises one.
            assert found[name]["status"] in ("pass", "warn", "skip"), found[name]
            continue
        assert found[name]["status"] in ("pass", "warn"), found[name]  # warn: e.g. a small /dev/shm, 1 NCCL rank


def test_gpu_checks_used_the_gpu(gpu_report):
    found = checks(gpu_report)
    assert found["cuda"]["figures"]["device_count"] == len(gpu_report["fingerprint"]["gpus"]) > 0  # torch's count
    assert found["nccl"]["figures"]["backend"] == "nccl"
    assert found["nccl"]["figures"]["allreduce_values"][0] == found["nccl"]["figures"]["allreduce_expected"]
    assert found["train"]["figures"]["device"] == "cuda"
    # Native bf16 from compute capability 8.0 (Ampere); below it fp16 with a GradScaler, never emulated bf16.
    native_bf16 = _capability(found) >= (8, 0)
    assert found["train"]["figures"]["precision"] == ("bfloat16" if native_bf16 else "float16")
    assert found["train"]["figures"]["grad_scaler"] is (not native_bf16)
    assert found["compile"]["figures"]["device"] == ("cuda" if _capability(found) >= (7, 0) else "cpu")
    assert "gpu_vs_cpu_rel_error" in found["autograd"]["figures"]
    assert found["shm"]["figures"]["pin_memory"] is True
    assert gpu_report["fingerprint"]["runner"]["check_processes"] in ("fork", "exec")


def test_perf_figures_are_possible(gpu_report):
    """Positive, never above the published peak (a timing error), and within the proof's band when it has one."""
    perf = checks(gpu_report)["perf"]["figures"]
    for key in ("tf32_tflops", "bf16_tflops", "fp16_tflops", "memory_gbps"):
        assert perf[key] is None or perf[key] > 0, (key, perf)
        share = perf.get(f"{key}_pct_of_peak")
        assert share is None or share <= 101, (key, perf)
    assert perf["h2d_pinned_gbps"] > 0
    band, why = _gpu_proof().band_for(perf["device"])
    if band is None:
        print(why)
        return
    for key in ("bf16_tflops", "memory_gbps"):
        low, high = getattr(band, key)
        assert low <= perf[key] <= high, f"{key} {perf[key]} outside the {band.label} band {low}-{high}"
