"""Reading nvidia-smi: query output, old drivers, values it cannot tell, and full `-q` reports."""
import subprocess

import pytest

from verify import nvsmi


def answering(*replies):
    """A stand-in for subprocess.run that answers each call with the next (returncode, stdout, stderr)."""
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        code, out, err = replies[len(calls) - 1]
        return subprocess.CompletedProcess(command, code, out, err)

    run.calls = calls
    return run


def present(name):
    return "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None


def test_parse_query_reads_every_gpu_and_skips_a_header():
    text = ("driver_version, name, compute_cap, compute_mode\n"
            "550.54.15, NVIDIA H100 80GB HBM3, 9.0, Default\n"
            "550.54.15, NVIDIA A100-SXM4-80GB, 8.0, Exclusive_Process\n")
    driver, gpus = nvsmi.parse_query(text)
    assert driver == "550.54.15"
    assert [(g.name, g.compute_capability, g.compute_mode) for g in gpus] == [
        ("NVIDIA H100 80GB HBM3", "9.0", "Default"), ("NVIDIA A100-SXM4-80GB", "8.0", "Exclusive_Process")]


def test_a_value_nvidia_smi_cannot_tell_is_none_not_a_crash():
    driver, gpus = nvsmi.parse_query("535.104.05, NVIDIA A100-SXM4-40GB, [N/A], [N/A]\n")
    assert driver == "535.104.05" and gpus[0].compute_capability is None and gpus[0].compute_mode is None


def test_a_driver_older_than_510_is_asked_again_without_compute_cap():
    run = answering(
        (2, "", 'Field "compute_cap" is not a valid field to query.\n'),
        (0, "470.256.02, Tesla T4, Default\n", ""),
    )
    report = nvsmi.query(which=present, run=run)
    assert report.driver == "470.256.02"
    assert report.gpus == (nvsmi.SmiGpu("Tesla T4", None, "Default"),)
    assert "too old to report compute capabilities" in report.problem
    assert "compute_cap" not in run.calls[1][1]


def test_no_nvidia_smi_and_a_failing_one_say_why():
    assert nvsmi.query(which=lambda name: None).problem == "nvidia-smi not found"
    run = answering((9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", ""))
    report = nvsmi.query(which=present, run=run)
    assert report.driver is None and "couldn't communicate" in report.problem


def test_exclusive_process_mode_is_noticed():
    _, gpus = nvsmi.parse_query("550.54.15, NVIDIA H100 80GB HBM3, 9.0, Exclusive_Process\n")
    assert nvsmi.exclusive_process(nvsmi.SmiReport("550.54.15", gpus))
    _, gpus = nvsmi.parse_query("550.54.15, NVIDIA H100 80GB HBM3, 9.0, Default\n")
    assert not nvsmi.exclusive_process(nvsmi.SmiReport("550.54.15", gpus))


# --- real outputs (tests/fixtures/nvidia-smi, sources in PROVENANCE.md; expected facts read by eye) ---

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "nvidia-smi"


def fixture(name):
    return (FIXTURES / name).read_text()


def test_query_gpu_with_a_header_and_mixed_capabilities():
    driver, gpus = nvsmi.parse_query(fixture("query-gpu-titanv-rtx5880ada-570.86.15.csv"), fields=None)
    assert driver == "570.86.15"
    assert [(g.name, g.compute_capability, g.compute_mode) for g in gpus] == [
        ("NVIDIA TITAN V", "7.0", "Default"), ("NVIDIA RTX 5880 Ada Generation", "8.9", "Default")]


def test_query_gpu_of_every_field_on_a_mig_enabled_h100():
    row = nvsmi.read_rows(fixture("query-gpu-all-fields-h100-80gb-hbm3-mig-590.48.01.csv"))[0]
    assert (row["driver_version"], row["count"], row["name"], row["compute_cap"]) == (
        "590.48.01", "1", "NVIDIA H100 80GB HBM3", "9.0")
    assert (row["compute_mode"], row["mig.mode.current"], row["memory.total"]) == ("Default", "Enabled", "81559 MiB")


def test_query_gpu_of_compute_cap_alone():
    _, gpus = nvsmi.parse_query(fixture("query-gpu-compute_cap-only-p40x3-rtx3090.csv"), fields=None)
    assert [g.compute_capability for g in gpus] == ["6.1", "6.1", "6.1", "8.6"]


def test_the_real_old_driver_refusal_triggers_the_retry():
    refusal = fixture("query-gpu-compute_cap-unknown-field-470.182.03.txt")
    run = answering((2, "", refusal), (0, "470.182.03, Tesla T4, Default\n", ""))
    report = nvsmi.query(which=present, run=run)
    assert report.driver == "470.182.03" and report.gpus[0].compute_capability is None


@pytest.mark.parametrize("name, driver, cuda, gpus", [
    ("q-h100-80gb-hbm3-mig-590.48.01.txt", "590.48.01", "13.1", [("NVIDIA H100 80GB HBM3", "Default", "Enabled")]),
    ("q-h200-580.173.02.txt", "580.173.02", "13.0", [("NVIDIA H200", "Default", "Disabled")]),
    ("q-gtx680-470.256.02.txt", "470.256.02", "11.4", [("NVIDIA GeForce GTX 680", "Default", None)]),
    ("q-i0-a16-vgpu-host-470.129.04.txt", "470.129.04", None, [("NVIDIA A16", "Default", None)]),  # "Not Found"
])
def test_full_q_reports(name, driver, cuda, gpus):
    facts = nvsmi.parse_q(fixture(name))
    assert (facts["driver"], facts["cuda"]) == (driver, cuda)
    assert [(g["name"], g["compute_mode"], g["mig_mode"]) for g in facts["gpus"]] == gpus
