"""verify's pure pieces: version logic, driver parsing, arch coverage, thresholds, formulas. No subprocesses."""
from __future__ import annotations

import json

import pytest

from verify import archs, catalog, faults, libs, manifest, perfmath, versions
from verify.errors import ManifestError, UsageError
from verify.result import Findings, Status

# --- versions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, parsed", [
    ("2.4.1", (2, 4, 1)),
    ("2.4.1+cu121", (2, 4, 1)),
    ("2.5.0a0+git1234", (2, 5, 0)),
    ("9.1.0.70", (9, 1, 0, 70)),
    ("12.1", (12, 1)),
    (" 530.30.02 ", (530, 30, 2)),
])
def test_parse_version(text, parsed):
    assert versions.parse_version(text) == parsed


def test_parse_version_rejects_text():
    with pytest.raises(ValueError):
        versions.parse_version("cpu")


@pytest.mark.parametrize("expected, actual, same", [
    ("2.4.1", "2.4.1+cu121", True),
    ("2.4.1", "2.4.0", False),
    ("12.1", "12.1", True),
    ("12.1", "12.4", False),
    ("9.1.0.70", "9.1.0", True),  # the manifest's pip version vs torch's runtime cuDNN
    ("9.1.0.70", "9.1.1", False),
    ("2.20.5", "2.20.5", True),
    ("2.20.5", "2.21.5", False),
    ("3.11", "3.11.7", True),
    ("3.11", "3.1.7", False),
])
def test_same_release(expected, actual, same):
    assert versions.same_release(expected, actual) is same


@pytest.mark.parametrize("actual, minimum, ok", [
    ("535.104.05", "530.30.02", True),
    ("530.30.02", "530.30.02", True),
    ("530.30", "530.30.02", False),
    ("525.60.13", "530.30.02", False),
    ("550", "530.30.02", True),
])
def test_at_least(actual, minimum, ok):
    assert versions.at_least(actual, minimum) is ok


@pytest.mark.parametrize("code, text", [(90100, "9.1.0"), (8902, "8.9.2"), (90501, "9.5.1"), (None, None)])
def test_cudnn_version_string(code, text):
    assert versions.cudnn_version_string(code) == text


@pytest.mark.parametrize("version, text", [((2, 20, 5), "2.20.5"), ((2, 21, 5, "+cuda12.4"), "2.21.5+cuda12.4"),
                                           (22005, "2.20.5"), (2708, "2.7.8"), (None, None)])
def test_nccl_version_string(version, text):
    assert versions.nccl_version_string(version) == text


@pytest.mark.parametrize("text, version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
     "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n", "535.104.05"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build  "
     "(dvs-builder@U16-I3-B03-4-3)  Thu Feb 22 01:25:25 UTC 2024\n", "550.54.14"),
    ("NVRM version: NVIDIA UNIX aarch64 Kernel Module  525.60.13  Wed Nov 30 06:39:21 UTC 2022\n", "525.60.13"),
    ("535.104.05\n535.104.05\n", "535.104.05"),  # nvidia-smi --query-gpu=driver_version, one line a GPU
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", None),
    ("", None),
])
def test_parse_driver_version(text, version):
    assert versions.parse_driver_version(text) == version


# --- arch coverage ----------------------------------------------------------------------------

WHEEL_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


@pytest.mark.parametrize("capability, arch_list, how, entry", [
    ((9, 0), WHEEL_ARCHS, "native", "sm_90"),
    ((8, 6), WHEEL_ARCHS, "native", "sm_86"),
    ((8, 9), WHEEL_ARCHS, "compatible", "sm_86"),  # L4/L40S/4090 run the sm_86 cubin
    ((7, 2), ["sm_70", "sm_80"], "compatible", "sm_70"),
    ((10, 0), WHEEL_ARCHS, "none", None),  # no Blackwell code, no PTX: "no kernel image"
    ((10, 0), [*WHEEL_ARCHS, "compute_90"], "ptx", "compute_90"),  # PTX JIT from a lower arch
    ((12, 0), ["sm_80", "compute_80", "compute_90"], "ptx", "compute_90"),  # the highest usable PTX
    ((8, 0), ["sm_86"], "none", None),  # a cubin never runs on a lower minor
    ((8, 0), ["compute_86"], "none", None),  # nor PTX on a lower capability
    ((9, 0), ["sm_90a"], "native", "sm_90a"),
    ((10, 0), ["sm_90a", "compute_90a"], "none", None),  # arch-specific code runs only on that arch
    ((3, 7), WHEEL_ARCHS, "none", None),
])
def test_coverage(capability, arch_list, how, entry):
    cover = archs.coverage(*capability, arch_list)
    assert (cover.ok, cover.how, cover.entry) == (how != "none", how, entry)


def test_coverage_description_names_the_device_arch():
    assert archs.coverage(10, 0, WHEEL_ARCHS).describe("sm_100") == "no cubin or PTX for sm_100"
    assert "JIT" in archs.coverage(10, 0, ["compute_90"]).describe("sm_100")


def test_parse_arch_rejects_other_spellings():
    with pytest.raises(ValueError):
        archs.parse_arch("8.6+PTX")


# --- shm --------------------------------------------------------------------------------------

def test_shm_docker_default_warns_with_the_fix():
    from verify.checks import shm

    status, message = shm.assess_shm(64 * 2**20)
    assert status is Status.WARN
    assert "64 MiB" in message and "--shm-size=8g" in message and "ipc: host" in message


@pytest.mark.parametrize("size, status", [(2**30, Status.PASS), (8 * 2**30, Status.PASS), (2**30 - 1, Status.WARN),
                                          (None, Status.WARN)])
def test_shm_threshold(size, status):
    from verify.checks import shm

    assert shm.assess_shm(size)[0] is status


@pytest.mark.parametrize("error, hinted", [
    (RuntimeError("DataLoader worker (pid 123) is killed by signal: Bus error. It is possible that dataloader's "
                  "workers are out of shared memory."), True),
    (RuntimeError("unable to write to file </torch_123_456_0>: No space left on device (28)"), True),
    (RuntimeError("DataLoader worker (pid(s) 782) exited unexpectedly"), True),
    (ValueError("batch 0 came back wrong: sum 1.0, expected 2.0"), False),
])
def test_loader_failure_explained(error, hinted):
    from verify.checks import shm

    message = shm.explain_loader_failure(error)
    assert ("--shm-size=8g" in message) is hinted
    assert str(error).splitlines()[0][:30] in message



def _surfaced_from_torch_op_lookup() -> AttributeError:
    """The error DataLoader gave in CI (torch 2.4.1, /dev/shm 1 MiB): its SIGCHLD handler raised the
    worker's death inside torch._ops' overload lookup, which re-raises any RuntimeError as an
    AttributeError `from None`, so the real cause is left only in __context__."""
    try:
        try:
            raise RuntimeError("DataLoader worker (pid(s) 41) exited unexpectedly")
        except RuntimeError:
            raise AttributeError("The underlying op of 'profiler._record_function_exit' has no overload name "
                                 "'_RecordFunction'") from None
    except AttributeError as error:
        return error


def test_loader_failure_hidden_behind_a_torch_lookup_error_still_gets_the_fix():
    from verify.checks import shm

    message = shm.explain_loader_failure(_surfaced_from_torch_op_lookup())
    assert "--shm-size=8g" in message
    assert "exited unexpectedly" in message


# --- libraries --------------------------------------------------------------------------------

MAPS = """\
7f0000000000-7f0000100000 r-xp 00000000 08:01 1 /opt/venv/lib/python3.11/site-packages/torch/lib/libtorch_cuda.so
7f0000100000-7f0000200000 r-xp 00000000 08:01 2 /usr/local/cuda/lib64/libcudnn.so.9.1.0
7f0000200000-7f0000300000 r-xp 00000000 08:01 3 /opt/venv/lib/python3.11/site-packages/nvidia/nccl/lib/libnccl.so.2
7f0000300000-7f0000400000 r-xp 00000000 08:01 4 /opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib/libcublasLt.so.12
7f0000400000-7f0000500000 r--p 00000000 08:01 4 /opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib/libcublasLt.so.12
7f0000500000-7f0000600000 r-xp 00000000 08:01 5 /usr/local/cuda/lib64/libcudnn_graph.so.9
7f0000600000-7f0000700000 rw-p 00000000 00:00 0
7f0000700000-7f0000800000 r-xp 00000000 08:01 6 /usr/lib/x86_64-linux-gnu/libc.so.6
"""


def test_libraries_from_maps():
    found = libs.libraries_from_maps(MAPS)
    assert found == {
        "libcudnn": ["/usr/local/cuda/lib64/libcudnn.so.9.1.0", "/usr/local/cuda/lib64/libcudnn_graph.so.9"],
        "libnccl": ["/opt/venv/lib/python3.11/site-packages/nvidia/nccl/lib/libnccl.so.2"],
        "libcublasLt": ["/opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib/libcublasLt.so.12"],
    }


def test_shadowing_flags_ld_library_path_outside_the_wheels(tmp_path):
    site = tmp_path / "site-packages"
    cuda = tmp_path / "cuda" / "lib64"
    for directory in (site / "nvidia" / "nccl" / "lib", cuda):
        directory.mkdir(parents=True)
    loaded = {
        "libcudnn": [str(cuda / "libcudnn.so.9")],
        "libnccl": [str(site / "nvidia" / "nccl" / "lib" / "libnccl.so.2")],
    }
    ld_path = f"{cuda}:{site / 'nvidia' / 'nccl' / 'lib'}"
    shadowed = libs.shadowed_libraries(loaded, ld_path, [str(site / "nvidia"), str(site / "torch")])
    assert shadowed == [(str(cuda / "libcudnn.so.9"), str(cuda))]
    assert "remove" in libs.describe_shadowing(shadowed) and str(cuda) in libs.describe_shadowing(shadowed)
    # Not in LD_LIBRARY_PATH: loaded through RPATH or ldconfig, which is not shadowing.
    assert libs.shadowed_libraries(loaded, "", [str(site / "nvidia")]) == []


def test_cuda_wheel_conflicts():
    conflicts, by_major = libs.cuda_wheel_conflicts(
        ["torch", "nvidia-cudnn-cu12", "nvidia_cudnn_cu11", "nvidia-nccl-cu12", "nvidia-cublas-cu11", "numpy"])
    assert conflicts == ["nvidia-cudnn-cu11 and nvidia-cudnn-cu12"]
    assert by_major == {"11": ["nvidia-cublas-cu11", "nvidia-cudnn-cu11"], "12": ["nvidia-cudnn-cu12", "nvidia-nccl-cu12"]}
    assert libs.cuda_wheel_conflicts(["nvidia-cudnn-cu12", "nvidia-cuda-runtime-cu12"]) == (
        [], {"12": ["nvidia-cuda-runtime-cu12", "nvidia-cudnn-cu12"]})


# --- perf arithmetic --------------------------------------------------------------------------

@pytest.mark.parametrize("ranks, factor", [(1, 0.0), (2, 1.0), (4, 1.5), (8, 1.75)])
def test_bus_bandwidth_is_the_nccl_tests_formula(ranks, factor):
    assert perfmath.bus_bandwidth(100.0, ranks) == pytest.approx(100.0 * factor)


def test_bus_bandwidth_rejects_no_ranks():
    with pytest.raises(ValueError):
        perfmath.bus_bandwidth(1.0, 0)


def test_matmul_tflops():
    assert perfmath.matmul_tflops(8192, 2 * 8192**3 / 500e12) == pytest.approx(500.0)


# Names as nvidia-smi / torch report them; expected entries and figures from NVIDIA's datasheets.
@pytest.mark.parametrize("name, label, bf16, memory", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4, 3350.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.5, 2000.0),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5, 3900.0),
    ("NVIDIA H200", "H200 SXM", 989.5, 4800.0),
    ("NVIDIA H200 NVL", "H200 NVL", 835.5, 4800.0),
    ("NVIDIA GH200 480GB", "GH200 96GB HBM3", 990.0, 4000.0),  # not the H200's 4.8 TB/s
    ("NVIDIA GH200 144G HBM3e", "GH200 144GB HBM3e", 990.0, 4900.0),
    ("NVIDIA B200", "B200", 2250.0, 7700.0),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB", 312.0, 2039.0),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB", 312.0, 1935.0),
    ("NVIDIA A100-SXM4-40GB", "A100 40GB", 312.0, 1555.0),
    ("A100-SXM4-40GB", "A100 40GB", 312.0, 1555.0),  # drivers before the "NVIDIA " prefix
    ("NVIDIA A10", "A10", 125.0, 600.0),
    ("NVIDIA L4", "L4", 121.0, 300.0),
    ("NVIDIA L40S", "L40S", 362.05, 864.0),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 165.2, 1008.0),
    ("NVIDIA GeForce RTX 5090", "RTX 5090", 209.5, 1792.0),
    ("NVIDIA GeForce RTX 3090", "RTX 3090", 71.0, 936.0),
    ("Tesla V100-SXM2-16GB", "V100 SXM2", None, 900.0),
    ("Tesla V100-PCIE-32GB", "V100 PCIe", None, 900.0),
    ("Tesla V100S-PCIE-32GB", "V100S PCIe", None, 1134.0),
    ("Tesla T4", "T4", None, 320.0),
    # No percentage: a MIG slice has part of the GPU; no published figures for these parts.
    ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", None, None, None),
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None, None, None),
    ("NVIDIA GeForce RTX 4090 Laptop GPU", None, None, None),
    ("NVIDIA A10G", None, None, None),
    ("NVIDIA GeForce GTX 1080", None, None, None),
])
def test_peak_lookup(name, label, bf16, memory):
    peak = perfmath.lookup_peak(name)
    assert (peak.label if peak else None) == label
    if peak:
        assert (peak.bf16_tflops, peak.memory_gbps) == (bf16, memory)
        assert peak.source


def test_a_power_limited_t4_is_not_warned_about():
    assert perfmath.lookup_peak("Tesla T4").warn_when_slow is False
    assert perfmath.lookup_peak("NVIDIA H100 80GB HBM3").warn_when_slow is True


def test_percent_of_peak():
    assert perfmath.percent_of(494.5, 989.0) == 50.0
    assert perfmath.percent_of(10.0, None) is None


# --- manifest, catalog, faults, findings -----------------------------------------------------

def test_manifest_load_and_defaults(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"tag": "t", "torch": "2.4.1", "cuda": None, "archs": ["sm_90"], "index": "pypi"}))
    loaded = manifest.load(str(path), environ={})
    assert (loaded.tag, loaded.torch, loaded.cuda, loaded.archs, loaded.path) == ("t", "2.4.1", None, ("sm_90",), str(path))
    assert manifest.load(None, environ={manifest.ENV_VAR: str(path)}).torch == "2.4.1"


def test_manifest_missing_default_means_host_run(monkeypatch, tmp_path):
    monkeypatch.setattr(manifest, "DEFAULT_PATH", str(tmp_path / "absent.json"))
    assert manifest.load(None, environ={}) is None


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('["a"]', "not a JSON object"),
    ('{"torch": 2.4}', "'torch' must be a string"),
    ('{"archs": "sm_90"}', "'archs' must be a list"),
])
def test_manifest_errors(tmp_path, content, problem):
    path = tmp_path / "manifest.json"
    path.write_text(content)
    with pytest.raises(ManifestError, match=problem):
        manifest.load(str(path), environ={})


def test_named_manifest_must_exist(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        manifest.load(None, environ={manifest.ENV_VAR: str(tmp_path / "absent.json")})


def test_select_checks():
    default = [spec.name for spec in catalog.select(None, None, perf=False)]
    assert default == ["environment", "driver", "health", "cuda", "cudnn", "nccl", "shm", "autograd", "compile",
                       "toolchain", "train"]
    assert [s.name for s in catalog.select(None, None, perf=True)][-1] == "perf"
    assert [s.name for s in catalog.select(["train,autograd"], None, perf=False)] == ["autograd", "train"]
    assert [s.name for s in catalog.select(["perf"], None, perf=False)] == ["perf"]
    assert "compile" not in [s.name for s in catalog.select(None, ["compile", "train"], perf=False)]


@pytest.mark.parametrize("only, skip", [(["cuda,nope"], None), (None, ["gpu"]), (["train"], ["train"])])
def test_select_rejects_unknown_or_empty(only, skip):
    with pytest.raises(UsageError):
        catalog.select(only, skip, perf=False)


def test_fault_spec_is_per_check():
    environ = {faults.ENV_VAR: "autograd:broken-grad, train:random-labels"}
    assert faults.fault_for("autograd", environ) == "broken-grad"
    assert faults.fault_for("train", environ) == "random-labels"
    assert faults.fault_for("cuda", environ) is None
    assert faults.fault_for("cuda", {}) is None


def test_findings_worst_wins():
    found = Findings()
    assert found.outcome("fine").status is Status.PASS
    found.warn("slow")
    assert (found.outcome("fine").status, found.outcome("fine").reason) == (Status.WARN, "slow")
    found.fail("broken")
    found.fail("also broken")
    assert (found.outcome("fine").status, found.outcome("fine").reason) == (Status.FAIL, "broken; also broken")


def test_compile_toolchain_preflight_names_what_is_missing():
    from verify.checks.compile import missing_toolchain

    nothing = missing_toolchain("cuda", which=lambda name: None, exists=lambda path: False, environ={})
    assert len(nothing) == 2 and "C compiler" in nothing[0] and "Python.h" in nothing[1]
    everything = missing_toolchain("cpu", which=lambda name: f"/usr/bin/{name}", exists=lambda path: True, environ={})
    assert everything == []
    cxx_only = missing_toolchain("cpu", which=lambda name: "/x" if name == "clang++" else None, exists=lambda p: True,
                                 environ={})
    assert cxx_only == []
    named = missing_toolchain("cpu", which=lambda name: None, exists=lambda path: True, environ={"CXX": "my-c++"})
    assert len(named) == 1 and "C++ compiler" in named[0]


# --- runner -----------------------------------------------------------------------------------

def test_exclusive_checks_run_alone_and_others_share_two_slots():
    from verify import runner

    def job(name):
        return runner._Job(0, catalog.get(name), 1.0, "", "", 0.0)

    assert runner._may_start(catalog.get("autograd"), {1: job("compile")}, parallel=2)
    assert not runner._may_start(catalog.get("autograd"), {1: job("compile"), 2: job("shm")}, parallel=2)
    assert not runner._may_start(catalog.get("nccl"), {1: job("shm")}, parallel=2)
    assert runner._may_start(catalog.get("nccl"), {}, parallel=2)
    assert not runner._may_start(catalog.get("shm"), {1: job("nccl")}, parallel=2)


def test_the_parent_process_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, verify.cli, verify.runner, verify.report.junit, verify.report.jsonfile; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_cuda_check_refuses_a_device_without_code_before_any_kernel():
    from verify.checks.cuda import _check_coverage

    b200 = {"index": 0, "name": "NVIDIA B200", "capability": "10.0", "sm": "sm_100"}
    found = Findings()
    _check_coverage(found, [b200], WHEEL_ARCHS, WHEEL_ARCHS)
    outcome = found.outcome("")
    assert outcome.status is Status.FAIL
    assert outcome.reason.startswith("GPU NVIDIA B200 (sm_100) is not covered by the compiled architectures (sm_50")
    assert "no kernel image is available" in outcome.reason and "use a tag whose archs include sm_100" in outcome.reason

    l4 = {"index": 0, "name": "NVIDIA L4", "capability": "8.9", "sm": "sm_89"}
    found = Findings()
    _check_coverage(found, [l4], WHEEL_ARCHS, WHEEL_ARCHS)
    assert found.outcome("ok").status is Status.PASS and l4["code"] == "sm_86 cubin runs on sm_89"

    found = Findings()
    _check_coverage(found, [l4], WHEEL_ARCHS[:-1], WHEEL_ARCHS)  # the image promised sm_90, torch lacks it
    assert found.outcome("").reason.startswith("the manifest promises sm_90 but torch was built for")


@pytest.mark.parametrize("missing, capability, device, warned", [
    ("no GPU: a CPU build", None, "cpu", False),
    (None, (6, 1), "cpu", True),  # GTX 1080: Triton needs 7.0; eager works, compile would fail
    (None, (7, 0), "cuda", False),
    (None, (9, 0), "cuda", False),
])
def test_compile_falls_back_to_the_cpu_below_triton_s_minimum(missing, capability, device, warned):
    from verify.checks.compile import choose_device

    chosen, why = choose_device(missing, capability)
    assert chosen == device and bool(why) is warned
    if warned:
        assert "sm_61" in why and "7.0" in why


@pytest.mark.parametrize("local_rank, visible, index", [(0, 8, 0), (3, 8, 3), (3, 1, 0), (0, 1, 0)])
def test_each_rank_finds_its_gpu_also_when_the_launcher_gave_it_one(local_rank, visible, index):
    from verify.checks.distributed import gpu_for_rank

    assert gpu_for_rank(local_rank, visible) == index


def test_more_ranks_than_gpus_is_named():
    from verify.checks.distributed import gpu_for_rank

    with pytest.raises(RuntimeError, match="LOCAL_RANK 3 but 2 GPU"):
        gpu_for_rank(3, 2)


def test_both_blocking_wait_names_are_set_for_torch_2_1_and_later():
    from verify.checks.distributed import blocking_wait_variables

    environ = {"NCCL_BLOCKING_WAIT": "0"}
    blocking_wait_variables(environ)
    assert environ == {"NCCL_BLOCKING_WAIT": "0", "TORCH_NCCL_BLOCKING_WAIT": "1"}  # the user's choice stays


@pytest.mark.parametrize("locked, installed, same", [
    ("13.0.3", "13.0.3.0", True),  # PEP 440 pads releases with zeros
    ("9.1.0.70", "9.1.0.70", True),
    ("2.4.1", "2.4.1+cu121", False),  # another build of torch
    ("2.5.0a0", "2.5.0", False),
    ("12.1.105", "99.0", False),
])
def test_locked_package_versions(locked, installed, same):
    assert versions.same_version(locked, installed) is same


def test_changed_packages_name_both_versions_and_missing_ones():
    from verify import packages

    locked = {"torch": "2.4.1", "nvidia-nvtx-cu12": "12.1.105", "nvidia_cudnn_cu12": "9.1.0.70"}
    installed = {"torch": "2.4.1", "nvidia-nvtx-cu12": "99.0"}
    assert packages.changed(locked, installed) == [("nvidia-nvtx-cu12", "12.1.105", "99.0"),
                                                   ("nvidia_cudnn_cu12", "9.1.0.70", None)]


@pytest.mark.parametrize("text, release", [
    ("nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 13.0, V13.0.88\n", "13.0"),
    ("Cuda compilation tools, release 12.1, V12.1.105\nBuild cuda_12.1.r12.1/compiler.32688072_0\n", "12.1"),
    ("nvcc fatal   : Unknown option\n", None),
])
def test_nvcc_release(text, release):
    from verify.checks.toolchain import nvcc_release

    assert nvcc_release(text) == release


# The tail of the error torch.compile raised in the arm64 image under QEMU's default CPU (256-bit SVE),
# 2026-12-02: g++ 12 crashed compiling torch's SVE vector header.
GCC_CRASH = """CppCompileError: C++ compile error

Command:
g++ /tmp/torchinductor_pytorch/nk/c.main.cpp -D TORCH_INDUCTOR_CPP_WRAPPER -D CPU_CAPABILITY_SVE -D CPU_CAPABILITY_SVE256 -O3

Output:
during GIMPLE pass: lower
/opt/venv/lib/python3.11/site-packages/torch/include/ATen/cpu/vec/sve/vec_float.h:196:61: internal compiler error: Segmentation fault
0x18e9577 internal_error(char const*, ...)
"""


def test_a_crashed_compiler_is_named_as_a_compiler_bug_with_the_way_around_it():
    from verify.checks.compile import compiler_crash
    assert compiler_crash(GCC_CRASH) == (
        "the C++ compiler crashed (internal compiler error: Segmentation fault) on Inductor's SVE256 vector code: "
        "a compiler bug, not the model; ATEN_CPU_CAPABILITY=default makes Inductor write plain C++ that it compiles")
    assert compiler_crash("CppCompileError: C++ compile error\nerror: 'foo' was not declared in this scope") is None
