"""verify's report writers (table, JSON, JUnit) and the command line's usage errors. No checks run."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from verify import cli
from verify.report import jsonfile, junit, table
from verify.result import CheckResult, Report, Status

FINGERPRINT = {"hostname": "box", "time": "2026-01-01T00:00:00+00:00", "python": "3.11.7", "torch": "2.4.1",
               "cuda": "12.1", "cudnn": "9.1.0", "nccl": "2.20.5", "driver": "535.104.05",
               "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3"}], "manifest": "/etc/m.json", "tag": "t"}


def _report() -> Report:
    return Report([
        CheckResult("environment", Status.PASS, "9 versions match", 0.25, {"versions": {"torch": "2.4.1"}}, "torch 2.4.1"),
        CheckResult("driver", Status.FAIL, "driver 525.60.13 is older than 530.30.02", 0.1, {"driver": "525.60.13"},
                    "driver 525.60.13"),
        CheckResult("shm", Status.WARN, "/dev/shm is 64 MiB", 1.5, {"shm_bytes": 67108864}, "shm 64 MiB"),
        CheckResult("perf", Status.SKIP, "not requested", 0.0, {"nan": float("nan")}, ""),
    ], FINGERPRINT, 12.34)


def test_table_rows_align_and_keep_the_whole_reason():
    report = _report()
    lines = [table.header()] + [table.row(result) for result in report.results]
    reason_column = lines[0].index("REASON")
    for line, result in zip(lines[1:], report.results):
        assert line.startswith(result.name)
        assert line[reason_column:] == result.reason
        assert result.status.label in line
    long = CheckResult("train", Status.PASS, "ok", 3.0, {}, "x" * 80)
    assert "..." in table.row(long) and table.row(long).index("ok") == reason_column


def test_summary_line():
    report = _report()
    assert report.exit_code == 1
    assert report.summary() == ("verify: 1 passed, 1 warned, 1 failed, 1 skipped in 12.3 s - NOT fit to train: "
                                "see driver")
    clean = Report([CheckResult("cuda", Status.SKIP, "no GPU", 0.1)], {}, 1.0)
    assert clean.exit_code == 0 and clean.summary().endswith("no failures, but no GPU was tested")


def test_json_report_shape():
    data = json.loads(jsonfile.render(_report()))
    assert set(data) == {"schema", "fingerprint", "summary", "checks"}
    assert data["fingerprint"] == FINGERPRINT
    assert data["summary"]["exit_code"] == 1 and data["summary"]["failed_checks"] == ["driver"]
    assert [c["name"] for c in data["checks"]] == ["environment", "driver", "shm", "perf"]
    assert set(data["checks"][0]) == {"name", "status", "reason", "duration_s", "key_figure", "figures"}
    assert data["checks"][3]["figures"]["nan"] == "nan"  # JSON has no NaN: written as text, still valid JSON


def test_junit_maps_fail_to_failure_and_skip_to_skipped():
    root = ET.fromstring(junit.render(_report()))
    suite = root.find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "1" and suite.get("skipped") == "1"
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert cases["driver"].find("failure").get("message") == "driver 525.60.13 is older than 530.30.02"
    assert json.loads(cases["driver"].find("failure").text) == {"driver": "525.60.13"}
    assert cases["perf"].find("skipped").get("message") == "not requested"
    assert cases["environment"].find("failure") is None and cases["environment"].find("skipped") is None
    assert cases["shm"].find("system-out").text.startswith("WARN: /dev/shm is 64 MiB")
    properties = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert properties["driver"] == "535.104.05" and json.loads(properties["gpus"])[0]["index"] == 0


@pytest.mark.parametrize("argv, message", [
    (["--only", "cuda,bogus"], "unknown check 'bogus'"),
    (["--skip", "gpu"], "unknown check 'gpu'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--timeout", "0"], "--timeout must be a positive"),
    (["--timeout", "soon"], "invalid float value"),
    (["--json", "/no/such/dir/r.json"], "does not exist"),
    (["--manifest", "/no/such/manifest.json"], "no such file"),
])
def test_usage_errors_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and message in captured.err
