"""Which tag fits a host (`build.py --cuda auto`): pure, against tags chosen by hand.

tests/conformance/hosts.csv holds the hosts and the tags NVIDIA's rules give them from the committed
matrix, written by hand (tests/conformance/README.md, "Host table"); nothing here computes an expected
tag with the code under test.
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from pytorch_cuda import matrix, recommend
from pytorch_cuda.errors import NoCompatibleTag, UsageError
from pytorch_cuda.preflight import HostFacts, host_platform, instead
from verify import nvsmi

ROOT = Path(__file__).resolve().parent.parent
HOSTS = list(csv.DictReader((ROOT / "tests" / "conformance" / "hosts.csv").open()))
BUILDS = matrix.load().newest_per_tag()
# The matrix as hosts.csv's author read it (README, "The matrix as the table assumed it"): per CUDA line,
# its torch releases, x86_64 cubins, aarch64 cubins (None: no arm64 CUDA wheels), floor, toolkit driver.
CUBINS_12 = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
CUBINS_128 = ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
CUBINS_13 = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
ARM64_13 = ("sm_80", "sm_90", "sm_100", "sm_110", "sm_120")
ASSUMED = {
    "12.1": (("2.1.0", "2.1.1", "2.1.2", "2.2.0", "2.2.1", "2.2.2", "2.3.0", "2.3.1", "2.4.0", "2.4.1"),
             CUBINS_12, None, "525.60.13", "530.30.02"),
    "12.4": (("2.5.0", "2.5.1", "2.6.0"), CUBINS_12, None, "525.60.13", "550.54.14"),
    "12.6": (("2.7.0", "2.7.1"), CUBINS_12, None, "525.60.13", "560.28.03"),
    "12.8": (("2.8.0", "2.9.0", "2.9.1", "2.10.0"), CUBINS_128, None, "525.60.13", "570.26"),
    "13.0": (("2.11.0", "2.12.0", "2.12.1", "2.13.0", "2.14.0", "2.14.1"), CUBINS_13, ARM64_13, "580", "580.65.06"),
    "13.2": (("2.15.0",), CUBINS_13, ARM64_13, "580", "595.45.04"),
}


def report(driver: str | None, *gpus: tuple[str, str | None], problem: str = "") -> nvsmi.SmiReport:
    return nvsmi.SmiReport(driver, tuple(nvsmi.SmiGpu(name, cap) for name, cap in gpus), problem)


def parse_gpus(text: str) -> list[tuple[str, str]]:
    return [tuple(part.strip().rsplit("@", 1)) for part in text.split(" + ")]  # type: ignore[misc]


def test_the_matrix_is_what_the_host_table_assumed():
    lines: dict[str, tuple[list[str], tuple]] = {}
    for build in BUILDS:  # oldest first
        facts = (build.archs, build.arm64.archs if build.arm64 else None, build.driver_floor, build.toolkit_driver)
        torches, first = lines.setdefault(build.cuda, ([], facts))
        assert facts == first, build.short()
        torches.append(build.torch)
    assert {cuda: (tuple(torches), *facts) for cuda, (torches, facts) in lines.items()} == ASSUMED


def test_the_host_table_is_whole():
    assert len(HOSTS) >= 20 and len({h["id"] for h in HOSTS}) == len(HOSTS)
    assert all(h["says"].strip() and h["why"].strip() for h in HOSTS)
    assert {h["status"] for h in HOSTS} == {"ok", "warn", "none"}
    assert {h["platform"] for h in HOSTS} == set(matrix.PLATFORMS)


@pytest.mark.parametrize("host", HOSTS, ids=[h["id"] for h in HOSTS])
def test_the_chosen_tag_is_the_hand_written_one(host):
    facts = report(host["driver"], *parse_gpus(host["gpus"]))
    if host["expected"] == "none":
        with pytest.raises(NoCompatibleTag) as raised:
            recommend.choose(facts, BUILDS, (host["platform"],))
        said = str(raised.value)
    else:
        choice = recommend.choose(facts, BUILDS, (host["platform"],))
        assert (recommend.stem(choice.build), choice.status) == (host["expected"], host["status"]), choice.reason
        said = choice.reason
    assert host["says"] in said, said
    assert "\n" not in said and said.startswith(recommend.describe_host(facts, (host["platform"],)))


def test_the_reason_names_the_host_the_tag_and_the_rule_that_excluded_newer_ones():
    choice = recommend.choose(report("560.35.03", ("NVIDIA GeForce GTX 1080", "6.1")), BUILDS)
    assert choice.reason == (
        "NVIDIA GeForce GTX 1080 (sm_61) on driver 560.35.03: newest tag with kernels for sm_61 and full support "
        "from this driver is 2.7.1-cuda12.6; newer tags: 2.8.0-cuda12.8 to 2.15.0-cuda13.2 have no kernels for sm_61")


def test_newer_tags_are_grouped_by_the_rule_that_excluded_them():
    choice = recommend.choose(report("550.54.15", ("NVIDIA H100 80GB HBM3", "9.0")), BUILDS)
    assert choice.reason.endswith(
        "is 2.6.0-cuda12.4; newer tags: 2.7.0-cuda12.6 to 2.10.0-cuda12.8 run on this driver only through minor "
        "version compatibility (CUDA 12.6 wants 560.28.03, CUDA 12.8 wants 570.26); 2.11.0-cuda13.0 to "
        "2.15.0-cuda13.2 need driver >= 580"), choice.reason


def test_the_archs_are_named_before_the_driver_when_both_exclude_a_tag():
    """GTX 1080 on 550.54.15: 12.8 and 13.x lack sm_6x and also want a newer driver; only the archs are
    for good (a driver upgrade gives no kernels)."""
    choice = recommend.choose(report("550.54.15", ("NVIDIA GeForce GTX 1080", "6.1")), BUILDS)
    assert "2.8.0-cuda12.8 to 2.15.0-cuda13.2 have no kernels for sm_61" in choice.reason
    assert "need driver" not in choice.reason


def test_no_gpu_says_so_with_nvidia_smis_problem():
    with pytest.raises(NoCompatibleTag, match=r"^no NVIDIA GPU found on this host \(nvidia-smi not found\)$"):
        recommend.choose(report(None, problem="nvidia-smi not found"), BUILDS)
    with pytest.raises(NoCompatibleTag, match="nvidia-smi lists none"):
        recommend.choose(report("580.95.05"), BUILDS)
    assert issubclass(NoCompatibleTag, UsageError)  # exit 2 at the CLI, like other usage errors


def test_a_hung_nvidia_smi_is_not_called_no_gpu():
    hung = nvsmi.SmiReport(None, (), "nvidia-smi did not answer within 30 s (driver hung?): killed", hung=True)
    with pytest.raises(NoCompatibleTag, match=r"^cannot read this host's GPUs: nvidia-smi did not answer"):
        recommend.choose(hung, BUILDS)


def test_an_unknown_compute_capability_is_not_guessed():
    old = "this driver is too old to report compute capabilities (the compute_cap field needs >= 510)"
    with pytest.raises(NoCompatibleTag, match="compute capability of GPU 0 Tesla T4 is unknown"):
        recommend.choose(report("470.256.02", ("Tesla T4", None), problem=old), BUILDS)


def test_only_tags_with_wheels_for_the_platform_are_chosen():
    """An A100 on 550.54.15: on amd64 2.6.0-cuda12.4 (12.4 ok); arm64 has CUDA 13 tags only, below the floor."""
    a100 = report("550.54.15", ("NVIDIA A100-SXM4-80GB", "8.0"))
    assert recommend.stem(recommend.choose(a100, BUILDS).build) == "2.6.0-cuda12.4"
    with pytest.raises(NoCompatibleTag, match="upgrade the NVIDIA driver to >= 580"):
        recommend.choose(a100, BUILDS, (matrix.ARM64,))
    # Both platforms asked: the archs of both must cover (a T4 is sm_75: amd64 only).
    t4 = report("580.95.05", ("Tesla T4", "7.5"))
    with pytest.raises(NoCompatibleTag, match="kernels for sm_75"):
        recommend.choose(t4, BUILDS, matrix.PLATFORMS)


def entry(torch: str, cuda: str, archs: tuple[str, ...] | None, floor: str = "525.60.13",
          toolkit: str = "530.30.02") -> matrix.MatrixEntry:
    """A made-up entry, from a real one: only the facts the rule reads differ."""
    return dataclasses.replace(BUILDS[0], torch=torch, cuda=cuda, archs=archs, driver_floor=floor,
                               toolkit_driver=toolkit)


def test_ptx_covers_a_newer_gpu_but_a_cubin_beats_it():
    """compute_90 PTX JIT-compiles for 10.0 (warn); an older tag with an sm_100 cubin is ok, so it wins."""
    b200 = report("600.1", ("NVIDIA B200", "10.0"))
    ptx = entry("3.1.0", "12.9", ("sm_90", "compute_90"))
    cubin = entry("3.0.0", "12.9", ("sm_100",))
    choice = recommend.choose(b200, [ptx, cubin])
    assert (choice.build.torch, choice.status) == ("3.0.0", "ok")
    assert "3.1.0-cuda12.9 have only PTX for sm_100" in choice.reason
    alone = recommend.choose(b200, [ptx])
    assert alone.status == "warn" and "only PTX for sm_100: JIT-compiled on first start" in alone.reason


def test_an_entry_without_archs_is_never_chosen():
    choice = recommend.choose(report("600.1", ("NVIDIA H100 80GB HBM3", "9.0")),
                              [entry("3.1.0", "12.9", None), entry("3.0.0", "12.9", ("sm_90",))])
    assert choice.build.torch == "3.0.0" and "state no compiled archs" in choice.reason
    with pytest.raises(NoCompatibleTag, match="no tag of the matrix states its compiled archs"):
        recommend.choose(report("600.1", ("NVIDIA H100 80GB HBM3", "9.0")), [entry("3.1.0", "12.9", None)])


def test_the_newest_torch_wins_then_the_newest_cuda():
    h100 = report("600.1", ("NVIDIA H100 80GB HBM3", "9.0"))
    pair = [entry("3.0.0", "12.9", ("sm_90",)), entry("3.0.0", "12.10", ("sm_90",)), entry("2.99.0", "12.11", ("sm_90",))]
    assert recommend.stem(recommend.choose(h100, pair).build) == "3.0.0-cuda12.10"


def test_preflight_names_the_tag_that_works_here_instead():
    host = HostFacts("550.54.15", (nvsmi.SmiGpu("NVIDIA H100 80GB HBM3", "9.0"),), ("nvidia",), machine="x86_64")
    said = instead(host, "jupyter")
    assert said.startswith("works here instead: pytorch-cuda:2.6.0-cuda12.4-jupyter (NVIDIA H100"), said
    grace = HostFacts("580.95.05", (nvsmi.SmiGpu("NVIDIA GH200 480GB", "9.0"),), ("nvidia",), machine="aarch64")
    assert instead(grace).startswith("works here instead: pytorch-cuda:2.14.1-cuda13.0-runtime-arm64 ")
    nothing = HostFacts(None, (), ("nvidia",), problem="nvidia-smi not found", machine="x86_64")
    assert instead(nothing) == ("no tag of the matrix works here either: no NVIDIA GPU found on this host "
                                "(nvidia-smi not found)")


@pytest.mark.parametrize("machine, platform", [("x86_64", matrix.AMD64), ("aarch64", matrix.ARM64),
                                               ("arm64", matrix.ARM64), ("", matrix.AMD64)])
def test_the_hosts_platform(machine, platform):
    assert host_platform(machine) == platform
