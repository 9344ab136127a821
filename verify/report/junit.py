"""JUnit XML, so CI systems show each check as a test: fail -> <failure>, skip -> <skipped>.

JUnit has no "warning": a warned check passes, with its reason in <system-out>.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from verify.report.jsonfile import plain
from verify.result import Report, Status


def render(report: Report, suite: str = "verify") -> str:
    root = ET.Element("testsuites")
    testsuite = ET.SubElement(root, "testsuite", {
        "name": suite,
        "tests": str(len(report.results)),
        "failures": str(report.count(Status.FAIL)),
        "errors": "0",
        "skipped": str(report.count(Status.SKIP)),
        "time": f"{report.duration_s:.3f}",
        "hostname": str(report.fingerprint.get("hostname") or ""),
        "timestamp": str(report.fingerprint.get("time") or ""),
    })
    properties = ET.SubElement(testsuite, "properties")
    for key, value in report.fingerprint.items():
        text = value if isinstance(value, str) else json.dumps(plain(value))
        ET.SubElement(properties, "property", {"name": key, "value": text})
    for result in report.results:
        case = ET.SubElement(testsuite, "testcase", {
            "classname": suite, "name": result.name, "time": f"{result.duration_s:.3f}"})
        figures = json.dumps(plain(result.figures), indent=2, sort_keys=True)
        if result.status is Status.FAIL:
            failure = ET.SubElement(case, "failure", {"message": result.reason, "type": "fail"})
            failure.text = figures
        elif result.status is Status.SKIP:
            ET.SubElement(case, "skipped", {"message": result.reason})
        else:
            ET.SubElement(case, "system-out").text = f"{result.status.label}: {result.reason}\n{figures}"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
