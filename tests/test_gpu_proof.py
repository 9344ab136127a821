"""tools/gpu_proof.py runs end to end here; without a GPU it must say FAILED, never pass on skips."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def test_the_gpu_proof_runs_and_fails_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        import pytest

        pytest.skip("on a GPU machine the proof itself is the test")
    done = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_proof.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    proof = json.loads((tmp_path / "proof.json").read_text())
    assert proof["passed"] is False and proof["gpus"] == 0
    by_step = {s["step"]: s for s in proof["steps"]}
    assert set(by_step) >= {"verify", "torchrun", "pytest-gpu"}
    assert by_step["verify"]["exit_code"] == 1  # --require-gpu fails every GPU check here
    assert by_step["pytest-gpu"]["exit_code"] == 5 and "skipped" in by_step["pytest-gpu"]["why"]
    report = json.loads((tmp_path / "verify-report.json").read_text())
    assert {c["name"] for c in report["checks"]} >= {"cuda", "cudnn", "nccl", "perf", "train"}
