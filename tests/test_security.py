"""Security currency and the bill of materials, in the real CUDA 12.1 images: Debian's own three suites,
no update pending after a build, an SBOM that lists exactly what is installed (validated by
cyclonedx-python-lib), its digest in the label and manifest, and `build.py --audit` for real.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import threading

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from pytorch_cuda.engine import BuildEvents, DockerEngine, dockerfile_context
from verify import sbom

from .dockerutil import build_py, removing_leftovers_of_builds, unique

pytestmark = pytest.mark.docker

# Debian's own bookworm-slim image lists these (Types, URIs, Suites, Components, Signed-By), in
# /etc/apt/sources.list.d/debian.sources.
DEBIAN_OFFICIAL = [
    {"Types": "deb", "URIs": "http://deb.debian.org/debian", "Suites": "bookworm bookworm-updates",
     "Components": "main", "Signed-By": "/usr/share/keyrings/debian-archive-keyring.gpg"},
    {"Types": "deb", "URIs": "http://deb.debian.org/debian-security", "Suites": "bookworm-security",
     "Components": "main", "Signed-By": "/usr/share/keyrings/debian-archive-keyring.gpg"},
]
UPGRADABLE = "apt-get update -qq >/dev/null 2>&1 && apt list --upgradable 2>/dev/null | tail -n +2"


def stanzas(text: str) -> list[dict[str, str]]:
    blocks = [block for block in text.strip().split("\n\n") if block.strip()]
    return [dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith("#")) for block in blocks]


@pytest.mark.parametrize("variant", ["runtime", "jupyter", "ssh"])
def test_debians_own_suites_and_nothing_pending(built, containers, variant):
    tag = built[variant].tag
    code, out = containers.run(tag, ["sh", "-c", "cat /etc/apt/sources.list.d/debian.sources; "
                                                 "test ! -s /etc/apt/sources.list && echo NO-LIST"], entrypoint="", user="0")
    assert code == 0 and "NO-LIST" in out, out
    assert stanzas(out.replace("NO-LIST", "")) == DEBIAN_OFFICIAL
    code, out = containers.run(tag, ["sh", "-c", UPGRADABLE], entrypoint="", user="0", timeout=600)
    assert code == 0, out
    assert out.strip() == "", f"updates pending right after the build:\n{out}"


def test_the_sbom_lists_every_installed_package_with_the_locks_hashes(built, containers):
    spec = built["runtime"]
    result = build_py("--sbom", spec.tag)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(text) is None
    doc = json.loads(text)
    purls = {c["purl"] for c in doc["components"]}
    code, out = containers.run(spec.tag, ["sh", "-c", "dpkg-query -W -f '${Package} ${Version} ${Architecture}\\n'; "
                                                      "echo @@; pip freeze --all --disable-pip-version-check"],
                               entrypoint="")
    assert code == 0, out
    debian, python = out.split("@@")
    for line in debian.strip().splitlines():
        name, version, arch = line.split()
        assert any(p.startswith(f"pkg:deb/debian/{name}@{version}?arch={arch}") for p in purls), line
    frozen = [line.split("==") for line in python.split() if "==" in line]
    assert frozen and all(f"pkg:pypi/{name.lower().replace('_', '-')}@{version}" in purls for name, version in frozen)
    locked = sbom.lock_hashes([spec.lock.read_text()])
    for component in doc["components"]:
        if component["purl"].startswith("pkg:pypi/") and (component["name"], component["version"]) in locked:
            assert sorted(h["content"] for h in component["hashes"]) == sorted(locked[component["name"],
                                                                                      component["version"]])
    assert any(c["name"] == "torch" and c.get("hashes") for c in doc["components"])


def test_the_sbom_digest_is_in_the_label_the_manifest_and_verify(built, docker_client, containers):
    spec = built["runtime"]
    text = build_py("--sbom", spec.tag).stdout
    digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert docker_client.images.get(spec.tag).labels["io.pytorch-cuda.sbom-digest"] == digest
    code, out = containers.run(spec.tag, ["sh", "-c", "verify --only environment --json /tmp/r.json >/dev/null 2>&1; "
                                                      "cat /etc/pytorch-cuda/manifest.json; echo @@; cat /tmp/r.json"],
                               entrypoint="")
    manifest, report = out.split("@@")
    assert json.loads(manifest)["sbom_digest"] == digest
    environment = json.loads(report)["checks"][0]
    assert environment["figures"]["sbom"]["digest"] == digest
    assert environment["figures"]["sbom"]["debian"] > 50 and environment["figures"]["sbom"]["python"] > 20
    assert "SBOM" in environment["reason"]


@pytest.fixture
def osv_without_findings():
    """A loopback stand-in for api.osv.dev that knows no vulnerability: the Python part of an audit
    can pass here (the real osv.dev cannot be reached from this machine)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            queries = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["queries"]
            body = json.dumps({"results": [{} for _ in queries]}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"PYTORCH_CUDA_OSV_URL": f"http://127.0.0.1:{server.server_address[1]}/v1/querybatch"}
    server.shutdown()


def test_a_fresh_build_audits_clean(built, osv_without_findings):
    result = build_py("--audit", built["runtime"].tag, env=osv_without_findings, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "clean" in result.stdout.splitlines()[-1]


def test_an_unreachable_vulnerability_source_fails_the_audit_in_one_line(built):
    result = build_py("--audit", built["runtime"].tag, env={"PYTORCH_CUDA_OSV_URL": "http://127.0.0.1:9/v1"},
                      timeout=900)
    assert result.returncode == 1
    said = [line for line in result.stdout.splitlines() if line.startswith("could not audit:")]
    assert said == [said[0]] and "Python: OSV (http://127.0.0.1:9/v1) cannot be asked" in said[0], result.stdout


def test_an_old_openssl_is_found_and_named(built, docker_client, osv_without_findings):
    """An image with libssl3 from bookworm's point release, older than bookworm-security's."""
    dockerfile = (f"FROM {built['runtime'].tag}\nUSER root\n"
                  "RUN apt-get update && apt-get install -y --allow-downgrades 'libssl3/bookworm' "
                  "&& rm -rf /var/lib/apt/lists/*\n")
    context = dockerfile_context(dockerfile)
    tag = f"pytorch-cuda-old-openssl:{unique('t')}"
    engine = DockerEngine(docker_client)
    with removing_leftovers_of_builds(docker_client) as leftovers:
        engine.tag(engine.build(tag, context, "Dockerfile", {}, events=BuildEvents(on_line=leftovers.saw)), (tag,))
        try:
            result = build_py("--audit", tag, env=osv_without_findings, timeout=900)
        finally:
            docker_client.images.remove(tag, force=True)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("debian ")]
    assert any(row[1] == "libssl3" for row in rows), result.stdout
