"""Reading nvidia-smi: query output, old drivers, values it cannot tell, full `-q` reports, and an
nvidia-smi that does not answer (a hung driver) costing a bounded wait, never the run."""
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from verify import nvsmi


def answering(*replies):
    """A stand-in for nvsmi.run_smi that answers each call with the next (returncode, stdout, stderr)."""
    calls = []

    def run(command, timeout_s):
        calls.append(command)
        code, out, err = replies[len(calls) - 1]
        return nvsmi.SmiAnswer(code, out, err)

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


def test_q_sections_nest_by_indentation_and_keep_several_gpus():
    facts = nvsmi.parse_q(fixture("q-h100-sxm-x8-565.57.01-gpus-0-1.txt"))
    assert (facts["driver"], facts["cuda"], facts["attached"]) == ("565.57.01", "12.7", 8)  # 8 on the host, 2 shown
    assert [g["bus_id"] for g in facts["gpus"]] == ["00000000:18:00.0", "00000000:2A:00.0"]
    fields = facts["gpus"][1]["fields"]
    assert nvsmi.field_value(fields, "PCI", "GPU Link Info", "Link Width", "Max") == "16x"
    assert nvsmi.field_value(fields, "Remapped Rows", "Bank Remap Availability Histogram", "Max") == "2560 bank(s)"
    assert nvsmi.field_value(fields, "Retired Pages", "Single Bit ECC") is None  # "N/A"
    # "HW Thermal Slowdown" is printed indented under "HW Slowdown : Not Active": it stays a clocks reason.
    reasons = nvsmi.section_of(fields, "Clocks Event Reasons")
    assert (reasons["HW Slowdown"], reasons["HW Thermal Slowdown"], reasons["Idle"]) == ("Not Active", "Not Active",
                                                                                        "Active")
    assert nvsmi.field_value(fields, "GPU Memory Power Readings", "Power Draw") == "50.06 W"  # title with a trailing space


def test_q_old_layout_and_repeated_sections():
    fields = nvsmi.parse_q(fixture("q-v100-sxm2-x4-418.67-gpu-0.txt"))["gpus"][0]["fields"]
    assert nvsmi.field_value(fields, "ECC Errors", "Volatile", "Double Bit", "Total") == "0"
    assert nvsmi.field_value(fields, "Retired Pages", "Pending") == "No"
    assert nvsmi.section_of(fields, "Clocks Event Reasons", "Clocks Throttle Reasons")["Idle"] == "Active"
    assert nvsmi.section_of(fields, "Clocks Event Reasons") == {}  # absent: an empty section, not an error
    mig = nvsmi.parse_q(fixture("q-h100-80gb-hbm3-mig-590.48.01.txt"))["gpus"][0]["fields"]
    assert [nvsmi.field_value(mig, title, "GPU Instance ID") for title in
            ("MIG Device", "MIG Device #2", "MIG Device #3", "MIG Device #4")] == ["2", "3", "9", "10"]


# --- a hung nvidia-smi (GPU fallen off the bus, Xid 79): bounded, killed, abandoned, said in words ---

def fake_smi(tmp_path, body):
    path = tmp_path / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


class Unkillable(subprocess.Popen):
    """A process stuck in the kernel (uninterruptible sleep): SIGKILL stays pending, the process stays."""

    started = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Unkillable.started.append(self.pid)

    def kill(self):
        pass

    terminate = kill


@pytest.fixture
def unkillable(monkeypatch):
    Unkillable.started = []
    monkeypatch.setattr(subprocess, "Popen", Unkillable)
    yield Unkillable.started
    for pid in Unkillable.started:  # the test's own stand-in: really end it now
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_an_nvidia_smi_that_will_not_die_is_abandoned_and_named(tmp_path, monkeypatch, unkillable):
    """subprocess.run(timeout=) kills, then waits without limit: here the wait would last the whole sleep."""
    smi = fake_smi(tmp_path, "sleep 30")
    monkeypatch.setattr(nvsmi, "TIMEOUT_S", 0.5)
    monkeypatch.setattr(nvsmi, "KILL_GRACE_S", 0.5, raising=False)
    answer = {}
    started = time.monotonic()
    worker = threading.Thread(target=lambda: answer.update(report=nvsmi.query(which=lambda name: smi)), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "query() still waits on an nvidia-smi that cannot be killed"
    assert time.monotonic() - started < 5
    problem = answer["report"].problem
    assert "nvidia-smi did not answer within 0.5 s (driver hung?)" in problem, problem
    assert f"process {unkillable[0]} is stuck in the kernel" in problem and "Xid" in problem
    assert answer["report"].driver is None and answer["report"].gpus == ()
    assert answer["report"].hung


def test_a_slow_nvidia_smi_is_killed_and_reaped(tmp_path):
    smi = fake_smi(tmp_path, "sleep 30")
    started = time.monotonic()
    with pytest.raises(nvsmi.SmiHung, match=r"did not answer within 0\.3 s \(driver hung\?\): killed;") as caught:
        nvsmi.run_smi([smi, "-q"], 0.3)
    assert time.monotonic() - started < 5 and not caught.value.abandoned


def test_run_smi_returns_what_nvidia_smi_printed(tmp_path):
    smi = fake_smi(tmp_path, 'echo "$1"; echo oops >&2; exit 3')
    assert nvsmi.run_smi([smi, "-q"], 5) == nvsmi.SmiAnswer(3, "-q\n", "oops\n")


def test_gpus_in_q_reads_a_report_and_is_empty_without_nvidia_smi(tmp_path):
    fixture = next((Path(__file__).parent / "fixtures" / "nvidia-smi").glob("q-h100-80gb-hbm3-mig-*.txt"))
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat '{fixture}'\n")
    smi.chmod(0o755)
    gpus = nvsmi.gpus_in_q(which=lambda name: str(smi))
    assert gpus and gpus[0]["name"].startswith("NVIDIA H100")
    assert nvsmi.gpus_in_q(which=lambda name: None) == []
