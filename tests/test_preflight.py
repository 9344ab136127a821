"""Preflight verdicts from an image's labels and host facts (pure), nvidia-smi's answers, and the CLI here."""
import pytest

from pytorch_cuda.preflight import HostFacts, cdi_specs, evaluate
from verify import compat, nvsmi
from verify.manifest import from_labels

LABELS_241 = {
    "io.pytorch-cuda.torch": "2.4.1", "io.pytorch-cuda.cuda": "12.1",
    "io.pytorch-cuda.driver-floor": "525.60.13", "io.pytorch-cuda.toolkit-driver": "530.30.02",
    "io.pytorch-cuda.archs": "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90",
}
IMAGE = from_labels(LABELS_241, "pytorch-cuda:2.4.1-cuda12.1-runtime")
H100 = nvsmi.SmiGpu("NVIDIA H100 80GB HBM3", "9.0")
TOOLKIT = ("nvidia", "runc")


def statuses(findings):
    return [f.status for f in findings]


def test_a_good_host_passes():
    findings = evaluate(IMAGE, HostFacts("550.54.15", (H100,), TOOLKIT))
    assert statuses(findings) == ["ok", "ok", "ok"]


def test_a_driver_between_the_floor_and_the_toolkit_driver_warns_and_says_what_may_not_work():
    findings = evaluate(IMAGE, HostFacts("525.60.13", (H100,), TOOLKIT))
    assert statuses(findings) == ["warn", "ok", "ok"]
    assert "minor version compatibility" in findings[0].message and "530.30.02" in findings[0].message
    assert "PTX" in findings[0].message


def test_a_driver_below_the_floor_fails_with_the_floor_and_the_fix():
    findings = evaluate(IMAGE, HostFacts("470.256.02", (H100,), TOOLKIT))
    assert findings[0].status == "fail"
    assert "470.256.02 is older than 525.60.13" in findings[0].message
    assert "upgrade the NVIDIA driver" in findings[0].message


def test_driver_versions_compare_numerically():
    assert evaluate(IMAGE, HostFacts("1000.1.1", (H100,), TOOLKIT))[0].status == "ok"
    assert evaluate(IMAGE, HostFacts("530.30.02", (H100,), TOOLKIT))[0].status == "ok"
    assert evaluate(IMAGE, HostFacts("530.29.99", (H100,), TOOLKIT))[0].status == "warn"
    assert evaluate(IMAGE, HostFacts("525.60.12", (H100,), TOOLKIT))[0].status == "fail"


def test_an_image_from_before_driver_floors_is_judged_by_its_toolkit_driver():
    old = from_labels({"io.pytorch-cuda.torch": "2.4.1", "io.pytorch-cuda.cuda": "12.1",
                       "io.pytorch-cuda.min-driver": "530.30.02", "io.pytorch-cuda.archs": "sm_90"}, "old")
    assert evaluate(old, HostFacts("525.60.13", (H100,), TOOLKIT))[0].status == "fail"
    assert evaluate(old, HostFacts("535.104.05", (H100,), TOOLKIT))[0].status == "ok"


def test_same_major_cubin_covers_a_newer_minor():
    """NVIDIA L4 is sm_89: the sm_86 cubin runs there (CUDA binary compatibility)."""
    findings = evaluate(IMAGE, HostFacts("550.54.15", (nvsmi.SmiGpu("NVIDIA L4", "8.9"),), TOOLKIT))
    assert findings[1].status == "ok" and "sm_86 cubin runs on sm_89" in findings[1].message


def test_gpu_arch_not_compiled_in_is_explained_before_it_fails():
    findings = evaluate(IMAGE, HostFacts("570.86.15", (nvsmi.SmiGpu("NVIDIA B200", "10.0"),), TOOLKIT))
    message = next(f.message for f in findings if f.status == "fail")
    assert "sm_100" in message and "no kernel image is available" in message


def test_unknown_compute_capability_warns_instead_of_crashing():
    findings = evaluate(IMAGE, HostFacts("550.54.15", (nvsmi.SmiGpu("NVIDIA A100-SXM4-40GB", None),), TOOLKIT))
    assert findings[1].status == "warn" and "compute capability unknown" in findings[1].message


def test_no_driver_and_no_container_toolkit():
    findings = evaluate(IMAGE, HostFacts(None, (), ("runc",), "nvidia-smi not found"))
    assert statuses(findings) == ["fail", "warn"]
    assert "no NVIDIA driver on this host (nvidia-smi not found)" in findings[0].message
    assert "NVIDIA Container Toolkit" in findings[1].message


@pytest.mark.parametrize("facts, says", [
    (dict(docker_runtimes=("runc",), hook="/usr/bin/nvidia-container-runtime-hook"), "--gpus all` works"),
    (dict(docker_runtimes=("runc",), cdi_specs=("/etc/cdi/nvidia.yaml",)), "nvidia.com/gpu=all"),
    (dict(docker_runtimes=("nvidia", "runc")), "nvidia runtime"),
])
def test_gpus_reach_docker_without_a_registered_nvidia_runtime(facts, says):
    """`docker run --gpus` and Compose device requests need only the toolkit's hook, or CDI."""
    findings = evaluate(IMAGE, HostFacts("550.54.15", (H100,), **facts))
    assert findings[-1].status == "ok" and says in findings[-1].message


def test_no_toolkit_found_is_a_warning_not_a_failure():
    findings = evaluate(IMAGE, HostFacts("550.54.15", (H100,), ("runc",)))
    assert findings[-1].status == "warn"


def test_cdi_specs_are_found_only_when_they_name_nvidia_gpus(tmp_path):
    (tmp_path / "nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: []\n")
    (tmp_path / "other.json").write_text('{"kind": "vendor.com/fpga"}')
    assert cdi_specs([str(tmp_path), str(tmp_path / "missing")]) == (str(tmp_path / "nvidia.yaml"),)


def test_image_without_our_labels():
    assert from_labels({}, "debian") is None
    assert statuses(evaluate(None, HostFacts("550.1", (H100,), TOOLKIT))) == ["fail"]


# The platform rule (verify/compat.py): the host's driver libraries are built for its CPU, so only an
# image of that CPU architecture can load them. Expected answers written by hand.
@pytest.mark.parametrize("machine, architecture, status", [
    ("x86_64", "amd64", "ok"),
    ("aarch64", "arm64", "ok"),  # a GH200 or GB200 node with an arm64 image
    ("arm64", "arm64", "ok"),  # how macOS and some BSDs spell it
    ("aarch64", "amd64", "fail"),  # today's amd64 images on a Grace node
    ("x86_64", "arm64", "fail"),
])
def test_the_image_must_be_built_for_the_hosts_cpu(machine, architecture, status):
    findings = evaluate(IMAGE, HostFacts("580.95.05", (H100,), TOOLKIT, machine=machine), architecture)
    assert len(findings) == 4 and findings[-1].status == status, findings[-1]


def test_an_amd64_image_on_a_grace_host_says_why_in_words():
    findings = evaluate(IMAGE, HostFacts("580.95.05", (nvsmi.SmiGpu("NVIDIA GH200 480GB", "9.0"),), TOOLKIT,
                                         machine="aarch64"), "amd64")
    said = findings[-1].message
    assert "the image is linux/amd64 but this host is aarch64 (linux/arm64)" in said
    assert "CUDA is not available" in said and "use an image built for linux/arm64" in said


def test_no_platform_finding_when_either_side_is_unknown():
    assert len(evaluate(IMAGE, HostFacts("580.95.05", (H100,), TOOLKIT, machine="aarch64"))) == 3
    assert len(evaluate(IMAGE, HostFacts("580.95.05", (H100,), TOOLKIT), "amd64")) == 3


def test_each_finding_says_what_it_judges():
    """So the CLI can tell a driver or GPU failure (which another tag may fix) from the others."""
    findings = evaluate(IMAGE, HostFacts("550.54.15", (H100, H100), TOOLKIT, machine="x86_64"), "amd64")
    assert [f.about for f in findings] == ["driver", "gpu", "gpu", "container", "platform"]
    assert [f.about for f in evaluate(None, HostFacts("550.1", (H100,), TOOLKIT))] == ["image"]
    # one verdict type: the image's own checks (verify.compat) and preflight judge with the same one
    assert all(type(f) is compat.Verdict for f in findings)
    driver = compat.driver_verdict("550.54.15", IMAGE.cuda, IMAGE.driver_floor, IMAGE.toolkit_driver)
    assert (findings[0].status, findings[0].message) == (driver.status, driver.message)
