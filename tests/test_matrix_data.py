"""Consistency of the committed images/matrix.json and images/cuda_drivers.json, read as plain JSON.

These catch a hand edit or a generator bug without the network; the live check that the file
matches wheel metadata is tests/test_matrixgen.py::test_live_refresh_of_torch_241_equals_committed_entry.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from pytorch_cuda import matrix
from tools.matrixgen.__main__ import GENERATED_BY
from verify import versions

IMAGES = Path(__file__).resolve().parent.parent / "images"
MATRIX = json.loads((IMAGES / "matrix.json").read_text())
DRIVERS = json.loads((IMAGES / "cuda_drivers.json").read_text())
BUILDS = MATRIX["builds"]

VERSION = re.compile(r"^\d+(\.\d+)+$")
PIN = re.compile(r"^\d+(\.\d+)+(\.\*)?$")  # CUDA 13's cuda-toolkit pins as ==13.0.96.*
DRIVER = re.compile(r"^\d{3}(\.\d+){1,2}$")
ARCH = re.compile(r"^(sm|compute)_(\d+)[a-z]?$")
PINNED_COMPONENTS = {
    "cuda_runtime": "nvidia-cuda-runtime",
    "cudnn": "nvidia-cudnn",
    "nccl": "nvidia-nccl",
    "cublas": "nvidia-cublas",
}


def ids(builds):
    return [f"{b['torch']}-cu{b['cuda']}-{b['index']}" for b in builds]


def test_document_header():
    assert set(MATRIX) == {"schema", "generated_by", "generated_on", "indexes", "builds"}
    assert MATRIX["schema"] == matrix.SCHEMA
    assert MATRIX["generated_by"] == GENERATED_BY
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", MATRIX["generated_on"])
    assert MATRIX["indexes"]["pypi"] == "https://pypi.org/simple"
    assert {b["index"] for b in BUILDS} <= set(MATRIX["indexes"])


def test_file_is_in_the_tools_canonical_form():
    text = (IMAGES / "matrix.json").read_text()
    assert text == json.dumps(MATRIX, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    order = [(versions.parse_version(b["torch"]), versions.parse_version(b["cuda"]), b["index"]) for b in BUILDS]
    assert order == sorted(order)


def test_no_duplicate_build_keys():
    keys = [(b["torch"], b["cuda"], b["index"]) for b in BUILDS]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("build", BUILDS, ids=ids(BUILDS))
def test_build_entry(build):
    missing, extra = matrix.ENTRY_KEYS - set(build), set(build) - matrix.ENTRY_KEYS
    assert not missing and not extra, f"missing keys {sorted(missing)}, unknown keys {sorted(extra)}"
    assert VERSION.match(build["torch"]) and re.fullmatch(r"\d+\.\d+", build["cuda"])

    # CUDA is the major.minor of the runtime pin; every named pin is one of nvidia_packages.
    assert build["cuda_runtime"] is not None
    assert ".".join(build["cuda_runtime"].split(".")[:2]) == build["cuda"]
    packages = build["nvidia_packages"]
    assert packages and all(PIN.match(v) for v in packages.values())
    assert all(n.startswith("nvidia-") or n == "cuda-toolkit" for n in packages)
    for field, package in PINNED_COMPONENTS.items():
        value = build[field]
        named = {n: v for n, v in packages.items() if re.fullmatch(rf"{package}(-cu\d+)?", n)}
        if value is None:  # only where torch pins no exact version (e.g. a range)
            assert not named and field != "cuda_runtime"
        else:
            assert list(named.values()) == [value], f"{field}={value} vs {named}"
    suffixes = {m.group(1) for n in packages if (m := re.search(r"-cu(\d+)$", n))}
    assert suffixes <= {build["cuda"].split(".")[0]}

    # The drivers are the table's values: this CUDA minor's release driver, and its major's floor.
    assert build["toolkit_driver"] == DRIVERS["toolkit_driver"].get(build["cuda"])
    assert build["toolkit_driver"] is not None and DRIVER.match(build["toolkit_driver"])
    assert build["driver_floor"] == DRIVERS["minor_version_compatibility"][build["cuda"].split(".")[0]]

    pythons = build["pythons"]
    assert pythons and all(re.fullmatch(r"3\.\d+", p) for p in pythons)
    assert pythons == sorted(set(pythons), key=versions.parse_version)

    if build["archs"] is None:
        assert build["archs_source"] and build["archs_source"].startswith("not ")
    else:
        archs = build["archs"]
        assert archs and all(ARCH.match(a) for a in archs) and len(set(archs)) == len(archs)
        assert build["archs_source"] == "torch/lib/libtorch_python.so"

    for field in ("torchvision", "torchaudio", "triton"):
        assert build[field] is None or VERSION.match(build[field])

    arm64 = build["arm64"]
    if arm64 is not None:  # the release's aarch64 wheels are CUDA builds of the entry's CUDA
        assert set(arm64) == matrix.PLATFORM_BUILD_KEYS
        assert ".".join(arm64["cuda_runtime"].split(".")[:2]) == build["cuda"]
        arm_packages = arm64["nvidia_packages"]
        assert arm_packages and all(PIN.match(v) for v in arm_packages.values())
        assert all(n.startswith("nvidia-") or n == "cuda-toolkit" for n in arm_packages)
        assert [v for n, v in arm_packages.items() if re.fullmatch(r"nvidia-cuda-runtime(-cu\d+)?", n)] == [
            arm64["cuda_runtime"]]
        assert arm64["pythons"] and arm64["pythons"] == sorted(set(arm64["pythons"]), key=versions.parse_version)
        if arm64["archs"] is None:
            assert arm64["archs_source"].startswith("not ")
        else:
            assert all(ARCH.match(a) for a in arm64["archs"]) and len(set(arm64["archs"])) == len(arm64["archs"])
            assert arm64["archs_source"] == "torch/lib/libtorch_python.so"
        assert arm64["triton"] is None or VERSION.match(arm64["triton"])


def test_every_final_release_from_21_is_present():
    """The file's own list of PyPI releases has no hole: every minor from 2.1 to the newest one,
    and within a minor every patch from .0 to the newest one listed."""
    pypi = [b for b in BUILDS if b["index"] == "pypi"]
    by_minor: dict[tuple[int, int], set[int]] = defaultdict(set)
    for b in pypi:
        major, minor, patch = versions.parse_version(b["torch"])
        by_minor[(major, minor)].add(patch)
    minors = sorted(by_minor)
    assert minors[0] == (2, 1)
    assert minors == [(2, m) for m in range(1, minors[-1][1] + 1)]
    for minor, patches in by_minor.items():
        assert patches == set(range(max(patches) + 1)), f"torch {minor}: patches {sorted(patches)}"
    assert all(versions.parse_version(b["torch"]) >= (2, 1) for b in BUILDS)


def test_known_facts():
    """Facts about PyPI's wheels known independently of the tool; they cross-check it."""
    pypi = {b["torch"]: b for b in BUILDS if b["index"] == "pypi"}
    for v in ("2.4.0", "2.4.1"):
        assert pypi[v]["cuda"] == "12.1"
    for v in ("2.5.0", "2.5.1", "2.6.0"):
        assert pypi[v]["cuda"] == "12.4"
    assert pypi["2.4.1"]["torchvision"] == "0.19.1" and pypi["2.4.1"]["torchaudio"] == "2.4.1"
    assert pypi["2.4.1"]["cudnn"] == "9.1.0.70" and pypi["2.1.0"]["cudnn"].startswith("8.9.")
    assert pypi["2.4.1"]["pythons"] == ["3.8", "3.9", "3.10", "3.11", "3.12"]
    assert "sm_90" in pypi["2.1.0"]["archs"]


def test_known_arm64_facts():
    """PyPI's aarch64 torch wheels, read by hand from their metadata: 2.14.1's requires
    cuda-toolkit[...]==13.0.3, nvidia-cudnn-cu13 and nvidia-nccl-cu13 on any Linux; 2.4.1's and
    2.9.0's pin NVIDIA packages for x86_64 only (CPU builds on aarch64)."""
    pypi = {b["torch"]: b for b in BUILDS if b["index"] == "pypi"}
    arm64 = pypi["2.14.1"]["arm64"]
    assert pypi["2.14.1"]["cuda"] == "13.0" and arm64["cuda_runtime"].startswith("13.0.")
    assert arm64["nvidia_packages"]["cuda-toolkit"] == "13.0.3"
    assert arm64["nvidia_packages"]["nvidia-cudnn-cu13"] == "9.24.0.43"
    assert arm64["nvidia_packages"]["nvidia-nccl-cu13"] == "2.30.7"
    assert arm64["archs"] and "sm_90" in arm64["archs"]
    assert pypi["2.4.1"]["cuda"] == "12.1" and pypi["2.4.1"]["arm64"] is None
    assert pypi["2.9.0"]["arm64"] is None
    loaded = matrix.load()
    assert loaded.resolve(torch="2.14.1", cuda="13.0").platforms == ("linux/amd64", "linux/arm64")
    assert loaded.resolve(torch="2.4.1", cuda="12.1").platforms == ("linux/amd64",)
    assert loaded.resolve(torch="2.14.1").arm64 is not None


def test_driver_table():
    assert DRIVERS["source"].startswith("https://docs.nvidia.com/cuda/")
    table = DRIVERS["toolkit_driver"]
    rows = DRIVERS["rows"]
    assert all(DRIVER.match(v) for v in [*table.values(), *rows.values()])
    # Each minor version's value is the lowest of its rows (its GA release).
    per_minor: dict[str, list[str]] = defaultdict(list)
    for label, driver in rows.items():
        m = re.match(r"CUDA (\d+)\.(\d+)", label)
        assert m, label
        per_minor[f"{m.group(1)}.{m.group(2)}"].append(driver)
    assert set(per_minor) == set(table)
    for minor, drivers in per_minor.items():
        assert table[minor] == min(drivers, key=versions.parse_version), minor
    # Newer CUDA never needs an older driver.
    ordered = [table[m] for m in sorted(table, key=versions.parse_version)]
    assert ordered == sorted(ordered, key=versions.parse_version)
    floors = DRIVERS["minor_version_compatibility"]
    assert set(floors) >= {b["cuda"].split(".")[0] for b in BUILDS}
    for major, floor in floors.items():
        # NVIDIA: CUDA 11.0 shipped with an older driver than the later 11.x floor.
        same_major = [v for m, v in table.items() if m.split(".")[0] == major and m != "11.0"]
        assert all(versions.parse_version(floor) <= versions.parse_version(v) for v in same_major), major
