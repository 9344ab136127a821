"""The image's bill of materials: CycloneDX 1.5 JSON of its Debian and Python packages. Standard library only.

Written by the last step of every image's build (`python -m verify.sbom --write`), from what is
really installed (dpkg's status file, the venv's distributions) with the sha256 of each Python
package from the image's lock files; read back by `build.py --sbom` and by verify's environment
check. The document is deterministic for a given package set (sorted, no timestamp, a serial number
derived from the content), so its digest changes exactly when the installed packages do: the
digest goes into the image's manifest and label, and a rebuild that picked up a Debian security
update shows as a new digest.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import sys
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from verify import manifest as contract
from verify.packages import canonical

DEFAULT_PATH = contract.SBOM_PATH
DPKG_STATUS = "/var/lib/dpkg/status"
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def debian_packages(status_text: str) -> List[Dict[str, str]]:
    """Installed packages of a dpkg status file: name, version, architecture."""
    packages = []
    for stanza in status_text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed") and fields.get("Package"):
            packages.append({"name": fields["Package"], "version": fields.get("Version", ""),
                             "arch": fields.get("Architecture", "")})
    return sorted(packages, key=lambda p: (p["name"], p["arch"]))


def lock_hashes(lock_texts: Iterable[str]) -> Dict[Tuple[str, str], List[str]]:
    """(canonical name, version) -> the sha256 digests a lock file allows for it."""
    found: Dict[Tuple[str, str], List[str]] = {}
    for text in lock_texts:
        key: Optional[Tuple[str, str]] = None
        for line in text.splitlines():
            pin = _PIN.match(line)
            if pin:
                key = (canonical(pin.group(1)), pin.group(2))
                found.setdefault(key, [])
            for digest in _HASH.findall(line):
                if key is not None and digest not in found[key]:
                    found[key].append(digest)
    return found


def python_packages() -> List[Dict[str, str]]:
    """Distributions this interpreter sees (the image's venv): name, version."""
    seen: Dict[str, Dict[str, str]] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            seen.setdefault(canonical(name), {"name": canonical(name), "version": dist.version})
    return [seen[name] for name in sorted(seen)]


def _debian_component(package: Mapping[str, str], distro: str) -> Dict[str, Any]:
    purl = f"pkg:deb/debian/{package['name']}@{package['version']}?arch={package['arch']}&distro={distro}"
    return {"type": "library", "bom-ref": purl, "name": package["name"], "version": package["version"], "purl": purl,
            "properties": [{"name": "debian:architecture", "value": package["arch"]}]}


def _python_component(package: Mapping[str, str], hashes: Mapping[Tuple[str, str], List[str]]) -> Dict[str, Any]:
    purl = f"pkg:pypi/{package['name']}@{package['version']}"
    component: Dict[str, Any] = {"type": "library", "bom-ref": purl, "name": package["name"],
                                 "version": package["version"], "purl": purl}
    digests = hashes.get((package["name"], package["version"]))
    if digests:
        component["hashes"] = [{"alg": "SHA-256", "content": digest} for digest in sorted(digests)]
    return component


def document(image: str, debian: List[Dict[str, str]], python: List[Dict[str, str]],
             hashes: Mapping[Tuple[str, str], List[str]], distro: str = "debian-12") -> Dict[str, Any]:
    """The CycloneDX 1.5 document; its serial number is derived from its content (same packages, same document)."""
    components = [_debian_component(p, distro) for p in debian] + [_python_component(p, hashes) for p in python]
    body = json.dumps(components, sort_keys=True).encode()
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'pytorch-cuda:' + hashlib.sha256(body).hexdigest())}",
        "version": 1,
        "metadata": {"component": {"type": "container", "bom-ref": image, "name": "pytorch-cuda", "version": image}},
        "components": components,
    }


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def counts(doc: Mapping[str, Any]) -> Dict[str, int]:
    """How many Debian and Python packages a document lists."""
    purls = [c.get("purl", "") for c in doc.get("components", [])]
    return {"debian": sum(p.startswith("pkg:deb/") for p in purls), "python": sum(p.startswith("pkg:pypi/") for p in purls)}


def _distro() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as handle:
            facts = dict(line.rstrip("\n").split("=", 1) for line in handle if "=" in line)
    except OSError:
        return "debian"
    return f"{facts.get('ID', 'debian').strip(chr(34))}-{facts.get('VERSION_ID', '').strip(chr(34))}"


def write(path: str, manifest_path: str, locks: Iterable[str]) -> str:
    """Write the SBOM of this system and record its digest in the manifest; returns the digest."""
    with open(DPKG_STATUS, encoding="utf-8", errors="replace") as handle:
        debian = debian_packages(handle.read())
    lock_texts = []
    for lock in locks:
        with open(lock, encoding="utf-8") as handle:
            lock_texts.append(handle.read())
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    image = f"{manifest.get('tag', '?')}"
    text = dumps(document(image, debian, python_packages(), lock_hashes(lock_texts), _distro()))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    sbom_digest = digest(text)
    manifest["sbom_digest"] = sbom_digest
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return sbom_digest


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verify.sbom", description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="PATH", default=DEFAULT_PATH)
    parser.add_argument("--manifest", default=os.environ.get(contract.ENV_VAR, contract.DEFAULT_PATH))
    parser.add_argument("--lock", action="append", default=[], help="a lock file whose hashes the SBOM carries")
    args = parser.parse_args(argv)
    print(f"sbom: {args.write} {write(args.write, args.manifest, args.lock)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
