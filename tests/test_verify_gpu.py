"""verify on a machine with an NVIDIA GPU: every GPU check must pass for real, none may skip."""
from __future__ import annotations

import pytest
import torch

from .test_verify_run import EVERY_CHECK, checks, run_verify

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("no GPU visible to torch (torch.cuda.is_available() is False)")
    return run_verify(tmp_path_factory.mktemp("verify-gpu"), "--require-gpu", "--perf")


def test_every_check_passes_on_the_gpu(gpu_run):
    done, data, _ = gpu_run
    assert done.returncode == 0, done.stdout + done.stderr
    found = checks(data)
    assert list(found) == EVERY_CHECK
    for name in EVERY_CHECK:
        assert found[name]["status"] in ("pass", "warn"), found[name]  # warn: e.g. a small /dev/shm, a slow GPU


def test_gpu_checks_used_the_gpu(gpu_run):
    found = checks(gpu_run[1])
    assert found["cuda"]["figures"]["device_count"] == torch.cuda.device_count()
    assert found["nccl"]["figures"]["backend"] == "nccl"
    assert found["nccl"]["figures"]["allreduce_values"][0] == found["nccl"]["figures"]["allreduce_expected"]
    assert found["train"]["figures"]["device"] == "cuda"
    # Native bf16 from compute capability 8.0 (Ampere); below it fp16 with a GradScaler, never emulated bf16.
    native_bf16 = torch.cuda.get_device_capability(0) >= (8, 0)
    assert found["train"]["figures"]["precision"] == ("bfloat16" if native_bf16 else "float16")
    assert found["train"]["figures"]["grad_scaler"] is (not native_bf16)
    assert found["compile"]["figures"]["device"] == ("cuda" if torch.cuda.get_device_capability(0) >= (7, 0) else "cpu")
    assert "gpu_vs_cpu_rel_error" in found["autograd"]["figures"]
    assert found["shm"]["figures"]["pin_memory"] is True
    perf = found["perf"]["figures"]
    assert perf["fp16_tflops"] > 0 and perf["memory_gbps"] > 0 and perf["h2d_pinned_gbps"] > 0
    assert gpu_run[1]["fingerprint"]["gpus"]
