"""preflight and verify against tests/conformance/cases.csv: GPU x driver x image cases whose verdicts
were written by hand from NVIDIA's documents (sources in tests/conformance/README.md), never by our code.

Both sides read the real image contract: each case's image is the committed images/<tag>/manifest.json,
and preflight gets it through the labels the Dockerfile would carry.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from pytorch_cuda.preflight import HostFacts, evaluate
from verify import compat, nvsmi
from verify import manifest as contract
from verify.result import Findings, Status

ROOT = Path(__file__).resolve().parent.parent
CASES = list(csv.DictReader((ROOT / "tests" / "conformance" / "cases.csv").open()))
# What the table's author assumed of each image (tests/conformance/README.md, "Images").
ASSUMED = {
    "2.4.1-cuda12.1": ("12.1", "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90", "525.60.13", "530.30.02"),
    "2.6.0-cuda12.4": ("12.4", "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90", "525.60.13", "550.54.14"),
    "2.7.1-cuda12.6": ("12.6", "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90", "525.60.13", "560.28.03"),
    "2.10.0-cuda12.8": ("12.8", "sm_70 sm_75 sm_80 sm_86 sm_90 sm_100 sm_120", "525.60.13", "570.26"),
    "2.14.1-cuda13.0": ("13.0", "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120", "580", "580.65.06"),
    "2.15.0-cuda13.2": ("13.2", "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120", "580", "595.45.04"),
}
VERIFY_STATUS = {Status.PASS: compat.OK, Status.WARN: compat.WARN, Status.FAIL: compat.FAIL}


def image(tag: str) -> contract.Manifest:
    path = ROOT / "images" / tag / "manifest.json"
    return contract.Manifest.from_dict(json.loads(path.read_text()), str(path))


def test_the_table_is_big_and_balanced():
    assert len(CASES) >= 150
    verdicts = Counter(case["verdict"] for case in CASES)
    assert all(verdicts[v] >= 20 for v in ("ok", "warn", "fail")), verdicts
    assert {case["image"] for case in CASES} == set(ASSUMED)
    assert all(case["sources"].strip() and case["why"].strip() for case in CASES)


@pytest.mark.parametrize("tag", sorted(ASSUMED))
def test_the_images_are_what_the_table_assumed(tag):
    found = image(tag)
    assert (found.cuda, " ".join(found.archs), found.driver_floor, found.toolkit_driver) == ASSUMED[tag]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_preflight_agrees(case):
    labels = contract.to_labels(image(case["image"]))
    gpu = nvsmi.SmiGpu(case["gpu"], case["compute_capability"])
    driver, arch, docker = evaluate(contract.from_labels(labels, case["image"]),
                                    HostFacts(case["driver"], (gpu,), ("nvidia", "runc")))
    assert (driver.status, arch.status) == (case["driver_verdict"], case["arch_verdict"]), (driver, arch, case["why"])
    assert compat.worst([driver.status, arch.status, docker.status]) == case["verdict"]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_verify_agrees(case):
    from verify.checks import cuda, driver

    promise = image(case["image"])
    judged = driver.judge(case["driver"], promise)
    assert judged is not None and judged.status == case["driver_verdict"], (judged, case["why"])

    major, minor = case["compute_capability"].split(".")
    device = {"index": 0, "name": case["gpu"], "capability": case["compute_capability"],
              "sm": f"sm_{major}{minor}"}
    found = Findings()
    cuda._check_coverage(found, [device], list(promise.archs), list(promise.archs))
    assert VERIFY_STATUS[found.outcome("").status] == case["arch_verdict"], (found.outcome("").reason, case["why"])
