"""The proxy CA that pip inside a build needs: the user's bundle minus what pip already trusts.

The classic builder hands build args to RUN as environment variables, and Linux caps one such
string at 128 KiB; a whole system bundle (about 220 KiB) does not fit. pip trusts its vendored
certifi bundle already, so only the other certificates travel.
"""
from __future__ import annotations

import os
import re
import ssl
from pathlib import Path

from .errors import UsageError

CA_ENV_VARS = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
# Below the kernel's 128 KiB per-string limit, with room for the rest of the environment.
MAX_CA_BYTES = 100 * 1024
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def find_ca_file(explicit: str | None, environ: dict[str, str] | None = None) -> Path | None:
    """--ca-cert, else the first of PIP_CERT / SSL_CERT_FILE / REQUESTS_CA_BUNDLE that is set."""
    environ = dict(os.environ) if environ is None else environ
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UsageError(f"--ca-cert {explicit}: no such file")
        return path
    for name in CA_ENV_VARS:
        value = environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    return None


def pem_certificates(text: str) -> list[str]:
    return _PEM.findall(text)


def extra_certificates(bundle_text: str, trusted_text: str) -> list[str]:
    """Certificates in `bundle_text` that `trusted_text` lacks, compared by their DER bytes."""
    trusted = {ssl.PEM_cert_to_DER_cert(pem) for pem in pem_certificates(trusted_text)}
    return [pem for pem in pem_certificates(bundle_text) if ssl.PEM_cert_to_DER_cert(pem) not in trusted]


def build_arg_for(path: Path | None) -> str:
    """The PIP_CA_CERT build arg for a CA file: empty when pip needs nothing extra."""
    if path is None:
        return ""
    text = path.read_text(errors="replace")
    if not pem_certificates(text):
        raise UsageError(f"--ca-cert {path}: no PEM certificate in it")
    import certifi  # here, not at import: build.py's other commands need no certifi

    extra = extra_certificates(text, Path(certifi.where()).read_text())
    value = "\n".join(extra)
    if len(value.encode()) > MAX_CA_BYTES:
        raise UsageError(
            f"{path} holds {len(extra)} certificates pip does not already trust ({len(value) // 1024} KiB); "
            f"that is too large for a build arg: pass only your proxy's CA with --ca-cert"
        )
    return value
