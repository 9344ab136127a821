"""`build.py --audit TAG`: does an image carry a vulnerability that has a fix? Debian and Python, separately.

Debian: in a container of the image, apt against the image's own sources (main, updates, security)
lists the packages whose newer version waits in the security suite. Python: the image's bill of
materials (`--sbom`) names every Python package with its version; OSV (osv.dev, the database
pip-audit uses) answers which of them have a known vulnerability with a fixed version. A source that
cannot be asked is said in one line and fails the audit: an audit that could not look is no pass.
"""
from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from verify import manifest as contract

from .errors import PytorchCudaError

if TYPE_CHECKING:
    from .engine import Engine

OSV_URL = os.environ.get("PYTORCH_CUDA_OSV_URL", "https://api.osv.dev/v1/querybatch")
OSV_BATCH = 1000  # OSV's limit of queries per request
# apt-get update, then every upgradable package with the suite its candidate comes from.
APT_UPGRADABLE = ("apt-get update -qq >/tmp/apt-update.log 2>&1 || { tail -n 3 /tmp/apt-update.log >&2; exit 90; }; "
                  "apt list --upgradable 2>/dev/null | tail -n +2")


class AuditUnavailable(PytorchCudaError):
    """A vulnerability source could not be asked."""


@dataclass(frozen=True)
class Finding:
    source: str  # debian | python
    package: str
    installed: str
    fixed: str  # the version (Debian) or the advisories (Python) that fix it


@dataclass
class AuditReport:
    image: str
    findings: list[Finding] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)  # one line per source that could not be asked
    checked: dict[str, int] = field(default_factory=dict)  # source -> packages checked

    @property
    def clean(self) -> bool:
        return not self.findings and not self.unavailable


def pending_security_updates(apt_list: str) -> list[Finding]:
    """`apt list --upgradable` lines whose candidate is from a -security suite.

    'libssl3/bookworm-security 3.0.22-1~deb12u1 amd64 [upgradable from: 3.0.20-1~deb12u1]'
    """
    found = []
    for line in apt_list.splitlines():
        parts = line.split()
        if len(parts) < 6 or "/" not in parts[0] or "upgradable" not in line:
            continue
        name, suites = parts[0].split("/", 1)
        if any(suite.endswith("-security") for suite in suites.split(",")):
            found.append(Finding("debian", name, line.rsplit("from: ", 1)[-1].rstrip("]"), parts[1]))
    return found


def python_packages(sbom: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, version) of the Python packages an SBOM lists."""
    return [(c["name"], c["version"]) for c in sbom.get("components", []) if c.get("purl", "").startswith("pkg:pypi/")]


def osv_query(packages: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """OSV's batch answer for these PyPI packages: one {"vulns": [...]} per query, in order."""
    results: list[dict[str, Any]] = []
    for start in range(0, len(packages), OSV_BATCH):
        batch = packages[start:start + OSV_BATCH]
        body = json.dumps({"queries": [{"package": {"name": name, "ecosystem": "PyPI"}, "version": version}
                                       for name, version in batch]}).encode()
        request = urllib.request.Request(OSV_URL, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise AuditUnavailable(f"OSV ({OSV_URL}) cannot be asked: {getattr(err, 'reason', err)}") from None
        results.extend(answer.get("results", []))
    if len(results) != len(packages):
        raise AuditUnavailable(f"OSV answered {len(results)} of {len(packages)} queries")
    return results


def python_findings(packages: list[tuple[str, str]], results: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """The packages OSV knows a vulnerability of (OSV lists only those affecting the queried version)."""
    found = []
    for (name, version), result in zip(packages, results):
        ids = sorted(vuln["id"] for vuln in result.get("vulns") or [])
        if ids:
            found.append(Finding("python", name, version, ", ".join(ids)))
    return found


def audit(image: str, sbom: Mapping[str, Any], apt_list: str | None, apt_problem: str = "") -> AuditReport:
    """Combine both sources; `apt_list` is None when apt could not be run (`apt_problem` says why)."""
    report = AuditReport(image)
    if apt_list is None:
        report.unavailable.append(f"Debian: {apt_problem}")
    else:
        report.findings += pending_security_updates(apt_list)
        report.checked["debian"] = sum(1 for c in sbom.get("components", []) if c.get("purl", "").startswith("pkg:deb/"))
    packages = python_packages(sbom)
    try:
        report.findings += python_findings(packages, osv_query(packages))
        report.checked["python"] = len(packages)
    except AuditUnavailable as err:
        report.unavailable.append(f"Python: {err}")
    return report


def read_sbom(engine: Engine, reference: str) -> dict[str, Any]:
    data = engine.read_file(reference, contract.SBOM_PATH)
    if data is None:
        raise PytorchCudaError(f"{reference} has no {contract.SBOM_PATH}: it was built before images carried a bill "
                               "of materials; rebuild it")
    return dict(json.loads(data))


def sbom_command(reference: str) -> int:
    """`build.py --sbom TAG`: the image's CycloneDX document on stdout, read without starting a container."""
    from .engine import connect

    engine = connect()
    engine.labels(reference)  # a missing image: one clear line
    data = engine.read_file(reference, contract.SBOM_PATH)
    if data is None:
        read_sbom(engine, reference)  # raises the explanation
    sys.stdout.write((data or b"").decode())
    return 0


def audit_image(engine: Engine, reference: str) -> AuditReport:
    """One image's audit: the Python packages of its SBOM through OSV, and apt in a container of it for
    Debian's pending security updates (`build.py --audit`, and `--publish` before any push)."""
    document = read_sbom(engine, reference)
    code, output = engine.run_script(reference, APT_UPGRADABLE, timeout=600)
    apt_list, problem = (output, "") if code == 0 else (None, "apt-get update failed: " + " ".join(output.split())[-200:])
    return audit(reference, document, apt_list, problem)


def audit_command(reference: str) -> int:
    """`build.py --audit TAG`: findings as a table; exit 1 on a finding or a source that could not be asked."""
    from .engine import connect
    from .tables import table

    engine = connect()
    engine.labels(reference)
    report = audit_image(engine, reference)
    if report.findings:
        print(table(["SOURCE", "PACKAGE", "INSTALLED", "FIXED IN / ADVISORIES"],
                    [[f.source, f.package, f.installed, f.fixed] for f in report.findings]))
    for line in report.unavailable:
        print(f"could not audit: {line}")
    checked = ", ".join(f"{count} {source}" for source, count in sorted(report.checked.items()))
    verdict = "clean" if report.clean else f"{len(report.findings)} finding(s)" + (
        f", {len(report.unavailable)} source(s) not asked" if report.unavailable else "")
    print(f"{reference}: {verdict} ({checked or 'nothing'} packages checked)")
    return 0 if report.clean else 1
