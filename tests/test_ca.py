"""The proxy CA that reaches pip inside builds: only what pip's own bundle lacks."""
from pathlib import Path

import certifi
import pytest

from pytorch_cuda import ca
from pytorch_cuda.errors import UsageError

CERTIFI = Path(certifi.where()).read_text()
ONE_TRUSTED = ca.pem_certificates(CERTIFI)[0]


def test_trusted_certificates_are_dropped_and_others_kept(tmp_path):
    # A certificate the trusted set lacks: certifi's second one, removed from the trusted text.
    foreign = ca.pem_certificates(CERTIFI)[1]
    trusted_without_foreign = CERTIFI.replace(foreign, "")
    bundle = ONE_TRUSTED + "\n" + foreign + "\n"
    assert ca.extra_certificates(bundle, trusted_without_foreign) == [foreign]
    assert ca.extra_certificates(bundle, CERTIFI) == []


def test_build_arg_is_empty_without_a_file():
    assert ca.build_arg_for(None) == ""


def test_a_bundle_of_only_public_roots_adds_nothing(tmp_path):
    path = tmp_path / "public.pem"
    path.write_text(CERTIFI)
    assert ca.build_arg_for(path) == ""


def test_not_a_pem_file_is_a_usage_error(tmp_path):
    path = tmp_path / "junk.pem"
    path.write_text("hello")
    with pytest.raises(UsageError, match="no PEM certificate"):
        ca.build_arg_for(path)


def test_environment_variables_are_searched_in_order(tmp_path):
    first, second = tmp_path / "a.pem", tmp_path / "b.pem"
    first.write_text("x"), second.write_text("y")
    env = {"SSL_CERT_FILE": str(second), "PIP_CERT": str(first)}
    assert ca.find_ca_file(None, env) == first
    assert ca.find_ca_file(None, {"REQUESTS_CA_BUNDLE": str(second)}) == second
    assert ca.find_ca_file(None, {"PIP_CERT": str(tmp_path / "missing.pem")}) is None
    with pytest.raises(UsageError):
        ca.find_ca_file(str(tmp_path / "missing.pem"), env)


def test_this_machines_bundle_fits_in_a_build_arg():
    path = ca.find_ca_file(None)
    if path is None:
        pytest.skip("no CA bundle configured on this machine")
    assert len(ca.build_arg_for(path).encode()) <= ca.MAX_CA_BYTES
