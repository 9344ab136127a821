"""NVIDIA's rules in verify/compat.py, with expected answers taken from NVIDIA's documents.

- CUDA Compatibility guide, "Minor Version Compatibility": CUDA 12.x runs on drivers >= 525.60.13,
  13.x on >= 580; below the release's own driver, PTX JIT of newer PTX is not available.
- Toolkit release notes, "CUDA Toolkit and Corresponding Driver Versions": 12.4 GA 550.54.14.
- CUDA C++ Programming Guide, "Binary Compatibility" (cubins: same major, minor >= the cubin's).
- NVIDIA's Ampere architecture: bf16 tensor cores from compute capability 8.0 (A100 whitepaper).
(The full GPU x driver x image cases are tests/conformance, checked in test_conformance.py.)
"""
import pytest

from verify import compat


@pytest.mark.parametrize("driver, cuda, floor, toolkit, status", [
    ("535.104.05", "12.4", "525.60.13", "550.54.14", "warn"),  # most H100 fleets on a 12.4 image
    ("550.54.15", "12.4", "525.60.13", "550.54.14", "ok"),
    ("525.60.13", "12.8", "525.60.13", "570.26", "warn"),  # exactly the CUDA 12 floor
    ("525.60.12", "12.1", "525.60.13", "530.30.02", "fail"),
    ("550.54.15", "13.0", "580", "580.65.06", "fail"),  # CUDA 13 needs the 580 branch
    ("580.65.06", "13.2", "580", "595.45.04", "warn"),
    ("590.44.01", "13.0", "580", "580.65.06", "ok"),
])
def test_driver_verdict(driver, cuda, floor, toolkit, status):
    assert compat.driver_verdict(driver, cuda, floor, toolkit).status == status


def test_a_refusal_names_the_floor_and_the_fix():
    verdict = compat.driver_verdict("550.54.15", "13.0", "580", "580.65.06")
    assert "older than 580" in verdict.message and "CUDA 13.x" in verdict.message
    assert "upgrade the NVIDIA driver to >= 580.65.06" in verdict.message


def test_a_warning_names_what_may_not_work():
    message = compat.driver_verdict("535.104.05", "12.4", "525.60.13", "550.54.14").message
    assert "PTX" in message and "cudaErrorCallRequiresNewerDriver" in message and ">= 550.54.14" in message


@pytest.mark.parametrize("capability, arch_list, status", [
    ((8, 9), ["sm_80", "sm_86", "sm_90"], "ok"),  # L4 on the sm_86 cubin
    ((6, 1), ["sm_50", "sm_60", "sm_70"], "ok"),  # GTX 1080 on the sm_60 cubin
    ((10, 3), ["sm_90", "sm_100", "sm_120"], "ok"),  # B300 on the sm_100 cubin
    ((12, 1), ["sm_90", "sm_100", "sm_120"], "ok"),  # GB10 on the sm_120 cubin
    ((7, 0), ["sm_75", "sm_80"], "fail"),  # V100 on a CUDA 13 image: sm_75 never runs on 7.0
    ((10, 0), ["sm_80", "sm_90", "compute_90"], "warn"),  # PTX JIT only
    (None, ["sm_90"], "warn"),  # nvidia-smi could not tell
])
def test_arch_verdict(capability, arch_list, status):
    assert compat.arch_verdict("GPU", capability, arch_list).status == status


@pytest.mark.parametrize("text, parsed", [("8.9", (8, 9)), ("12.0", (12, 0)), ("[N/A]", None), ("", None),
                                          (None, None), ("9", None)])
def test_parse_capability(text, parsed):
    assert compat.parse_capability(text) == parsed


@pytest.mark.parametrize("capability, dtype, scaler", [
    ((7, 0), "float16", True),  # V100: no bf16 tensor cores; torch >= 2.3 would only emulate it
    ((7, 5), "float16", True),  # T4
    ((8, 0), "bfloat16", False),  # A100
    ((9, 0), "bfloat16", False),
])
def test_mixed_precision_uses_native_bf16_only(capability, dtype, scaler):
    assert compat.mixed_precision(capability) == (dtype, scaler)


@pytest.mark.parametrize("capability, supported", [((6, 0), False), ((6, 1), False), ((7, 0), True), ((9, 0), True)])
def test_triton_needs_compute_capability_7(capability, supported):
    assert compat.triton_supported(capability) is supported


@pytest.mark.parametrize("cuda, requirement", [("12.1", "cuda>=12.0"), ("12.8", "cuda>=12.0"), ("13.2", "cuda>=13.0")])
def test_the_container_requirement_is_the_majors_floor(cuda, requirement):
    assert compat.require_cuda(cuda) == requirement


def test_worst():
    assert compat.worst(["ok", "warn", "ok"]) == "warn" and compat.worst(["warn", "fail"]) == "fail"
    assert compat.worst([]) == "ok"
