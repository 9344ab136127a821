"""The bill of materials and the audit, on plain data: CycloneDX validity (the cyclonedx-python-lib
validator), determinism, lock hashes, apt's upgradable list, and OSV's batch answer from a recorded
response served on loopback (osv.dev cannot be reached from this machine; the unreachable path is real).
"""
from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from pytorch_cuda import audit, baseimage
from verify import sbom

FIXTURES = Path(__file__).parent / "fixtures"
STATUS = """Package: libssl3
Status: install ok installed
Architecture: amd64
Version: 3.0.17-1~deb12u2

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b8
Description: GNU Bourne Again SHell
 with a continuation line: that is not a field
"""
LOCK = """torch==2.4.1 \\
    --hash=sha256:{a} \\
    --hash=sha256:{b}
jinja2==3.1.4 \\
    --hash=sha256:{c}
""".format(a="a" * 64, b="b" * 64, c="c" * 64)


def test_dpkg_status_gives_only_installed_packages():
    assert sbom.debian_packages(STATUS) == [
        {"name": "bash", "version": "5.2.15-2+b8", "arch": "amd64"},
        {"name": "libssl3", "version": "3.0.17-1~deb12u2", "arch": "amd64"},
    ]


def test_the_document_is_valid_cyclonedx_deterministic_and_carries_the_lock_hashes():
    python = [{"name": "jinja2", "version": "3.1.4"}, {"name": "torch", "version": "2.4.1"}]
    doc = sbom.document("2.4.1-cuda12.1-runtime", sbom.debian_packages(STATUS), python, sbom.lock_hashes([LOCK]))
    text = sbom.dumps(doc)
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(text) is None
    again = sbom.dumps(sbom.document("2.4.1-cuda12.1-runtime", sbom.debian_packages(STATUS), python,
                                     sbom.lock_hashes([LOCK])))
    assert again == text  # same packages, same bytes: the digest moves only when they change
    torch = next(c for c in doc["components"] if c["name"] == "torch")
    assert torch["purl"] == "pkg:pypi/torch@2.4.1"
    assert [h["content"] for h in torch["hashes"]] == ["a" * 64, "b" * 64]
    assert sbom.counts(doc) == {"debian": 2, "python": 2}
    changed = sbom.document("2.4.1-cuda12.1-runtime", sbom.debian_packages(STATUS.replace("deb12u2", "deb12u3")),
                            python, sbom.lock_hashes([LOCK]))
    assert sbom.digest(sbom.dumps(changed)) != sbom.digest(text) and changed["serialNumber"] != doc["serialNumber"]


def test_a_broken_document_fails_the_validator():
    doc = sbom.document("x", [], [{"name": "torch", "version": "2.4.1"}], {})
    doc["components"][0]["hashes"] = [{"alg": "SHA-256", "content": "not hex"}]
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(doc)) is not None


APT_LIST = """libssl3/bookworm-security 3.0.18-1~deb12u1 amd64 [upgradable from: 3.0.17-1~deb12u2]
tzdata/bookworm-updates 2025b-0+deb12u2 all [upgradable from: 2025b-0+deb12u1]
openssl/bookworm-security,bookworm-updates 3.0.18-1~deb12u1 amd64 [upgradable from: 3.0.17-1~deb12u2]
"""


def test_only_updates_from_the_security_suite_count():
    found = audit.pending_security_updates(APT_LIST)
    assert [(f.package, f.installed, f.fixed) for f in found] == [
        ("libssl3", "3.0.17-1~deb12u2", "3.0.18-1~deb12u1"), ("openssl", "3.0.17-1~deb12u2", "3.0.18-1~deb12u1")]


@pytest.fixture
def osv_server(monkeypatch):
    """A loopback stand-in for api.osv.dev answering with a recorded querybatch response."""
    recorded = json.loads((FIXTURES / "osv-querybatch-response.json").read_text())
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = json.dumps(recorded["response"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(audit, "OSV_URL", f"http://127.0.0.1:{server.server_address[1]}/v1/querybatch")
    yield recorded, seen
    server.shutdown()


def test_python_packages_with_known_vulnerabilities_are_named(osv_server):
    recorded, seen = osv_server
    doc = sbom.document("x", [], [{"name": n, "version": v} for n, v in recorded["queries"]], {})
    report = audit.audit("x", doc, apt_list="")
    assert seen[0]["queries"][0] == {"package": {"name": "jinja2", "ecosystem": "PyPI"}, "version": "3.1.4"}
    assert [(f.package, f.installed) for f in report.findings] == [("jinja2", "3.1.4"), ("torch", "2.4.1")]
    assert "GHSA-53q9-r3pm-6pq6" in report.findings[1].fixed
    assert not report.clean and report.checked == {"debian": 0, "python": 3}


def test_an_unreachable_source_is_said_and_is_no_pass(monkeypatch):
    monkeypatch.setattr(audit, "OSV_URL", "http://127.0.0.1:9/v1/querybatch")
    doc = sbom.document("x", [], [{"name": "jinja2", "version": "3.1.6"}], {})
    report = audit.audit("x", doc, apt_list=None, apt_problem="apt-get update failed: no mirror")
    assert not report.findings and not report.clean
    assert report.unavailable[0] == "Debian: apt-get update failed: no mirror"
    assert report.unavailable[1].startswith("Python: OSV (http://127.0.0.1:9/v1/querybatch) cannot be asked")


def test_the_offline_base_gets_debians_own_three_suites():
    sources = baseimage.debian_sources("bookworm", "http://deb.debian.org/debian")
    stanzas = [dict(line.split(": ", 1) for line in block.splitlines()) for block in sources.strip().split("\n\n")]
    assert [(s["URIs"], s["Suites"]) for s in stanzas] == [
        ("http://deb.debian.org/debian", "bookworm bookworm-updates"),
        ("http://deb.debian.org/debian-security", "bookworm-security")]
    assert all(s["Components"] == "main" and s["Types"] == "deb" for s in stanzas)
    assert baseimage.security_mirror("http://mirror.example/debian/") == "http://mirror.example/debian-security"
