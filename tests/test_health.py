"""The `health` check: what `nvidia-smi -q` says about each GPU, judged like DCGM's level-1 diagnostic.

Every expected verdict below was written by hand from the fixture's lines (tests/fixtures/nvidia-smi,
PROVENANCE.md lists each file's facts) and the rule's documented source in verify/checks/health.py,
never taken from the code under test.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from verify import nvsmi
from verify.checks import health
from verify.context import CheckContext
from verify.result import Status

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia-smi"
PASS, WARN, FAIL = Status.PASS, Status.WARN, Status.FAIL


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def judged(text: str):
    facts = nvsmi.parse_q(text)
    return [(p.status, p.rule, p.gpus) for p in health.examine(facts)], health.outcome(facts)


def edited(text: str, old: str, new: str, count: int = 1) -> str:
    assert text.count(old) == count, (old, text.count(old))
    return text.replace(old, new)


# --- healthy reports, real ones: nothing to say, whatever they leave out ---

@pytest.mark.parametrize("name", [
    "q-h100-sxm-x8-565.57.01-gpus-0-1.txt",  # 2 of 8 H100 SXM, persistence on, idle at gen 5 x16
    "q-h200-580.173.02.txt",  # one H200
    "q-h100-80gb-hbm3-mig-590.48.01.txt",  # MIG on: Remapped Rows "N/A"
    "q-gtx680-470.256.02.txt",  # nearly everything "N/A"; persistence off, but the only GPU of its host
    "q-i0-a16-vgpu-host-470.129.04.txt",  # idle at gen 1 of 4, x4 of x16: the link narrows at idle
    "q-v100-sxm2-x4-418.67-gpu-0.txt",  # old layout; idle at x2 of x16
])
def test_a_healthy_report_passes(name):
    problems, outcome = judged(fixture(name))
    assert problems == []
    assert outcome.status is PASS, outcome.reason
    assert "no uncorrectable ECC errors" in outcome.reason


def test_the_healthy_h100_host_in_figures():
    _, outcome = judged(fixture("q-h100-sxm-x8-565.57.01-gpus-0-1.txt"))
    assert outcome.key_figure == "2 GPU(s)" and outcome.figures["attached_gpus"] == 8
    gpu = outcome.figures["gpus"][1]
    assert (gpu["bus_id"], gpu["persistence_mode"], gpu["idle"]) == ("00000000:2A:00.0", "Enabled", True)
    assert gpu["pcie"] == {"gen": "5", "max_gen": "5", "width": "16x", "max_width": "16x"}
    assert "PCIe link not judged on 2 GPU(s)" in outcome.reason


# --- sick GPUs: one fixture a fault (real where a published output showed it, else an edited copy) ---

def test_pending_row_remap_warns_to_reset():  # real: A100, Remapped Rows Pending Yes
    problems, outcome = judged(fixture("q-a100-sxm4-x4-555.42.02-gpu-9e-remap-pending.txt"))
    assert problems == [(WARN, "row-remap-pending", "GPU 0 (00000000:9E:00.0)")]
    assert outcome.status is WARN
    assert "row remapping is pending" in outcome.reason and "reset the GPU" in outcome.reason


def test_row_remap_failure_fails_as_needing_service():
    problems, outcome = judged(fixture("q-h100-sxm-x8-565.57.01-gpu-0-edited-remap-failure.txt"))
    assert problems == [(FAIL, "row-remap-failure", "GPU 0 (00000000:18:00.0)")]
    assert outcome.status is FAIL and "needs service" in outcome.reason


def test_volatile_uncorrectable_dram_ecc_fails():
    problems, outcome = judged(fixture("q-h100-sxm-x8-565.57.01-gpu-0-edited-volatile-dram-uncorrectable.txt"))
    assert problems == [(FAIL, "volatile-uncorrectable-ecc", "GPU 0 (00000000:18:00.0)")]
    assert outcome.status is FAIL
    assert "2 uncorrectable ECC error(s) since the driver loaded" in outcome.reason
    assert outcome.figures["gpus"][0]["volatile_uncorrectable_ecc"] == 2


def test_an_x8_link_on_an_x16_slot_warns_while_busy():
    text = fixture("q-h100-sxm-x8-565.57.01-gpu-0-edited-busy-x8-link.txt")
    problems, outcome = judged(text)
    assert problems == [(WARN, "pcie-width", "GPU 0 (00000000:18:00.0)")]
    assert "PCIe link is x8 of x16 while busy" in outcome.reason and "50%" in outcome.reason
    # The same link at idle is not judged: nvidia-smi documents that width and generation drop when idle.
    idle = edited(text, "Idle                              : Not Active", "Idle                              : Active")
    assert judged(idle)[0] == []
    # Busy and one generation down as well: both said.
    slower = edited(text, "                Current                   : 5\n", "                Current                   : 4\n")
    assert [rule for _, rule, _ in judged(slower)[0]] == ["pcie-width", "pcie-generation"]


def test_hw_slowdown_with_the_power_brake_warns():  # real: H100 at 86 MHz, HW Power Brake Slowdown Active
    problems, outcome = judged(fixture("q-h100-x8-535.161.08-gpu-0-hw-power-brake.txt"))
    assert problems == [(WARN, "clocks-slowdown", "GPU 0 (00000000:19:00.0)")]
    assert "HW Slowdown, HW Power Brake Slowdown active" in outcome.reason
    assert "power supplies" in outcome.reason


def test_persistence_off_on_a_two_gpu_host_warns_once_naming_both():
    problems, outcome = judged(fixture("q-h100-sxm-x8-565.57.01-2-gpus-edited-persistence-off.txt"))
    assert problems == [(WARN, "persistence-off", "GPU 0, 1")]
    assert "2-GPU host" in outcome.reason and "nvidia-persistenced" in outcome.reason


def test_the_old_layout_throttle_reasons_and_retired_pages():
    """Driver 418: "Clocks Throttle Reasons", Retired Pages "Pending", ECC as Double Bit > Total."""
    problems, outcome = judged(fixture("q-v100-sxm2-x4-418.67-gpu-0-edited-dbe-pending-retirement-thermal.txt"))
    gpu = "GPU 0 (00000004:04:00.0)"
    assert problems == [(WARN, "retired-pages-pending", gpu), (FAIL, "volatile-uncorrectable-ecc", gpu),
                        (WARN, "clocks-slowdown", gpu)]
    assert outcome.status is FAIL
    assert "1 uncorrectable ECC error(s)" in outcome.reason and "pending retirement" in outcome.reason
    assert "HW Slowdown, HW Thermal Slowdown active" in outcome.reason and "too hot" in outcome.reason


def test_retired_pages_fail_at_dcgms_limit_of_63():
    text = fixture("q-v100-sxm2-x4-418.67-gpu-0.txt")
    at_limit = edited(edited(text, "Single Bit ECC              : 0", "Single Bit ECC              : 60"),
                      "Double Bit ECC              : 0", "Double Bit ECC              : 3")
    problems, outcome = judged(at_limit)
    assert problems == [(FAIL, "retired-pages-limit", "GPU 0 (00000004:04:00.0)")]
    assert "63 memory pages retired (60 for single-bit, 3 for double-bit" in outcome.reason
    below = edited(at_limit, "Double Bit ECC              : 3", "Double Bit ECC              : 2")
    assert judged(below)[0] == []


def test_the_drivers_own_recovery_verdicts():
    text = fixture("q-h100-sxm-x8-565.57.01-gpus-0-1.txt")
    reset = edited(text, "Reset Required                    : No", "Reset Required                    : Yes", 2)
    assert judged(reset)[0] == [(FAIL, "reset-required", "GPU 0 (00000000:18:00.0)"),
                                (FAIL, "reset-required", "GPU 1 (00000000:2A:00.0)")]
    drain_reset = edited(text, "Drain and Reset Recommended       : No", "Drain and Reset Recommended       : Yes", 2)
    assert judged(drain_reset)[0] == [(WARN, "drain-and-reset", "GPU 0 (00000000:18:00.0)"),
                                      (WARN, "drain-and-reset", "GPU 1 (00000000:2A:00.0)")]
    one = "GPU Recovery Action                   : "
    head, gpu0, gpu1 = re.split(r"(?m)^(?=GPU 0000)", text)
    drain = head + gpu0 + edited(gpu1, one + "None", one + "Drain P2P")  # GPU 1 only
    assert judged(drain)[0] == [(WARN, "recovery-action", "GPU 1 (00000000:2A:00.0)")]
    reboot = edited(text, one + "None", one + "Node Reboot", 2)
    problems, outcome = judged(reboot)
    assert [status for status, _, _ in problems] == [FAIL, FAIL] and "Node Reboot" in outcome.reason


# --- run(): nvidia-smi on PATH, or not; failing, hung ---

def fake_smi(tmp_path, monkeypatch, body: str) -> None:
    path = tmp_path / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))


def test_run_reads_nvidia_smi_q(tmp_path, monkeypatch):
    report = FIXTURES / "q-a100-sxm4-x4-555.42.02-gpu-9e-remap-pending.txt"
    fake_smi(tmp_path, monkeypatch, f'[ "$1" = -q ] || exit 2\n/bin/cat "{report}"')
    outcome = health.run(CheckContext())
    assert outcome.status is WARN and "row remapping is pending" in outcome.reason


def test_without_nvidia_smi_it_skips_out_loud(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    outcome = health.run(CheckContext())
    assert outcome.status is Status.SKIP and "no NVIDIA driver found" in outcome.reason
    required = health.run(CheckContext(require_gpu=True))
    assert required.status is FAIL and "--require-gpu" in required.reason


def test_no_devices_skips_and_a_lost_gpu_fails(tmp_path, monkeypatch):
    fake_smi(tmp_path, monkeypatch, "echo 'No devices were found'; exit 6")
    outcome = health.run(CheckContext())
    assert outcome.status is Status.SKIP and "No devices were found" in outcome.reason
    fake_smi(tmp_path, monkeypatch, "echo 'Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error'"
                                    "; exit 15")
    outcome = health.run(CheckContext())
    assert outcome.status is FAIL
    assert outcome.reason == ("nvidia-smi -q failed (exit 15): Unable to determine the device handle for "
                              "GPU0000:3B:00.0: Unknown Error")


def test_a_hung_nvidia_smi_fails_in_words_within_the_checks_time(tmp_path, monkeypatch):
    fake_smi(tmp_path, monkeypatch, "exec /bin/sleep 30")
    outcome = health.run(CheckContext(timeout_s=11.0))  # leaves nvidia-smi 1 s, then the kill's grace
    assert outcome.status is FAIL
    assert outcome.reason.startswith("nvidia-smi did not answer within 1 s (driver hung?)"), outcome.reason
    assert outcome.figures["nvidia_smi_timeout_s"] == 1.0
