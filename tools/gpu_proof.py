#!/usr/bin/env python3
"""Prove verify's GPU paths on a machine with an NVIDIA GPU: one run, well under 8 minutes.

Needs python3 with a CUDA build of torch and pytest, and no Docker: it runs from a checkout of this
repository, the way a GPU host without containers (or a lent GPU machine) runs it:

    python3 tools/gpu_proof.py OUT_DIR

It writes into OUT_DIR:
  nvidia-smi-q.txt          `nvidia-smi -q` (commit it under tests/fixtures/nvidia-smi/ as a fixture)
  query-gpu.csv             `nvidia-smi --query-gpu=...` with the fields preflight reads
  verify-report.json        `python3 -m verify --perf --require-gpu --json` (the full suite, on the GPU)
  torchrun-report.json      `torchrun --nproc-per-node <GPUs> -m verify --distributed --backend nccl`
  pytest-gpu.xml            the `gpu`-marked tests (JUnit)
  proof.json                what ran, exit codes, durations, GPU, driver and torch: the summary to commit
Exit 0 only when every step passed. Each step has its own time limit, so a hang costs one step.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
GPU_TESTS = ["tests/test_verify_gpu.py", "tests/test_verify_distributed.py"]
QUERY = "driver_version,name,compute_cap,compute_mode,memory.total,power.limit,clocks.max.sm"


def step(name: str, command: List[str], timeout_s: int, out: Path, capture: str = "") -> Dict[str, Any]:
    """Run one step; its output goes to OUT/<name>.log (or to `capture` when that file is the result)."""
    started = time.monotonic()
    log = out / (capture or f"{name}.log")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    try:
        with log.open("w") as handle:
            done = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT if not capture else
                                  subprocess.DEVNULL, env=env, timeout=timeout_s)
        code = done.returncode
    except subprocess.TimeoutExpired:
        code = 124
    except OSError as err:
        log.write_text(f"{err}\n")
        code = 127
    result = {"step": name, "command": " ".join(command), "exit_code": code,
              "seconds": round(time.monotonic() - started, 1)}
    print(f"gpu_proof: {name}: exit {code} in {result['seconds']} s", flush=True)
    return result


def _no_skips(result: Dict[str, Any], junit: Path) -> Dict[str, Any]:
    """On a GPU machine a skipped `gpu` test proves nothing: count it as a failure."""
    try:
        root = ET.parse(junit).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        if suite is None:
            return result
        result["tests"], result["skipped"] = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    except (OSError, ET.ParseError, AttributeError):
        return result
    if result["exit_code"] == 0 and (result["skipped"] or not result["tests"]):
        result["exit_code"] = 5
        result["why"] = f"{result['skipped']} of {result['tests']} gpu tests skipped"
    return result


def main(argv: List[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "gpu-proof").resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    steps = []
    smi = shutil.which("nvidia-smi")
    if smi:
        steps.append(step("nvidia-smi-q", [smi, "-q"], 60, out, capture="nvidia-smi-q.txt"))
        steps.append(step("query-gpu", [smi, f"--query-gpu={QUERY}", "--format=csv"], 60, out,
                          capture="query-gpu.csv"))
    try:
        import torch

        gpus = torch.cuda.device_count()
        facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus,
                 "gpu_names": [torch.cuda.get_device_name(i) for i in range(gpus)],
                 "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if gpus else None}
    except Exception as err:  # report it; the steps below say the rest
        gpus, facts = 0, {"torch_error": f"{type(err).__name__}: {err}"}
    steps.append(step("verify", [python, "-m", "verify", "--perf", "--require-gpu", "--json",
                                 str(out / "verify-report.json"), "--junit", str(out / "verify-report.xml")],
                      300, out))
    steps.append(step("torchrun", [python, "-m", "torch.distributed.run", f"--nproc-per-node={max(gpus, 1)}",
                                   "-m", "verify", "--distributed", "--backend", "nccl", "--require-gpu", "--json",
                                   str(out / "torchrun-report.json")], 180, out))
    tests = step("pytest-gpu", [python, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q", "-rs",
                                f"--junitxml={out / 'pytest-gpu.xml'}", *GPU_TESTS], 300, out)
    steps.append(_no_skips(tests, out / "pytest-gpu.xml"))
    summary = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "host": os.uname().nodename, **facts, "steps": steps,
               "passed": all(s["exit_code"] == 0 for s in steps)}
    (out / "proof.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"gpu_proof: {'PASSED' if summary['passed'] else 'FAILED'}; files in {out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
