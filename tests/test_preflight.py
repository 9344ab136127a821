"""Preflight verdicts from labels and host facts (pure), and the CLI on this GPU-less host."""
import pytest

from pytorch_cuda.preflight import Gpu, HostFacts, arch_support, evaluate, parse_nvidia_smi

LABELS = {
    "io.pytorch-cuda.torch": "2.4.1", "io.pytorch-cuda.cuda": "12.1", "io.pytorch-cuda.min-driver": "530.30.02",
    "io.pytorch-cuda.archs": "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90",
}
H100 = Gpu("NVIDIA H100 80GB HBM3", "9.0")


def statuses(findings):
    return [f.status for f in findings]


def test_a_good_host_passes():
    findings = evaluate(LABELS, HostFacts("550.54.15", (H100,), ("nvidia", "runc")))
    assert statuses(findings) == ["ok", "ok", "ok"]


def test_old_driver_names_both_versions_and_the_fix():
    findings = evaluate(LABELS, HostFacts("525.60.13", (H100,), ("nvidia", "runc")))
    fail = [f for f in findings if f.status == "fail"]
    assert len(fail) == 1
    assert "525.60.13 is older than 530.30.02" in fail[0].message and "upgrade the NVIDIA driver" in fail[0].message


def test_driver_versions_compare_numerically():
    assert statuses(evaluate(LABELS, HostFacts("1000.1.1", (H100,), ("nvidia",))))[0] == "ok"
    assert statuses(evaluate(LABELS, HostFacts("530.30.02", (H100,), ("nvidia",))))[0] == "ok"
    assert statuses(evaluate(LABELS, HostFacts("530.29.99", (H100,), ("nvidia",))))[0] == "fail"


def test_gpu_arch_not_compiled_in_is_explained_before_it_fails():
    blackwell = Gpu("NVIDIA B200", "10.0")
    findings = evaluate(LABELS, HostFacts("570.86.10", (blackwell,), ("nvidia",)))
    message = next(f.message for f in findings if f.status == "fail")
    assert "sm_100" in message and "no kernel image is available" in message


@pytest.mark.parametrize("cc, archs, expected", [
    ("9.0", ["sm_80", "sm_90"], "native"),
    ("8.9", ["sm_80", "sm_90"], "none"),
    ("8.9", ["sm_80", "compute_80"], "ptx"),
    ("10.0", ["sm_90", "compute_90"], "ptx"),
    ("7.5", ["sm_80", "compute_80"], "none"),
])
def test_arch_support(cc, archs, expected):
    assert arch_support(cc, archs) == expected


def test_no_driver_and_no_nvidia_runtime():
    findings = evaluate(LABELS, HostFacts(None, (), ("runc",), "nvidia-smi not found"))
    assert statuses(findings) == ["fail", "warn"]
    assert "no NVIDIA driver on this host (nvidia-smi not found)" in findings[0].message
    assert "NVIDIA Container Toolkit" in findings[1].message


def test_image_without_our_labels():
    assert statuses(evaluate({}, HostFacts("550.1", (H100,), ("nvidia",)))) == ["fail"]


def test_parse_nvidia_smi():
    text = "550.54.15, NVIDIA H100 80GB HBM3, 9.0\n550.54.15, NVIDIA A100-SXM4-80GB, 8.0\n"
    driver, gpus = parse_nvidia_smi(text)
    assert driver == "550.54.15"
    assert [g.compute_capability for g in gpus] == ["9.0", "8.0"]
