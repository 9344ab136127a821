"""The one image-reference parser."""
import pytest

from pytorch_cuda import refs


@pytest.mark.parametrize("reference, repository, tag", [
    ("pytorch-cuda:2.4.1-cuda12.1-runtime", "pytorch-cuda", "2.4.1-cuda12.1-runtime"),
    ("ghcr.io/acme/pytorch-cuda:v2.4-cuda12.1-ssh", "ghcr.io/acme/pytorch-cuda", "v2.4-cuda12.1-ssh"),
    ("127.0.0.1:5000/team/pytorch-cuda:x", "127.0.0.1:5000/team/pytorch-cuda", "x"),
    ("127.0.0.1:5000/team/pytorch-cuda", "127.0.0.1:5000/team/pytorch-cuda", "latest"),  # a port, not a tag
    ("debian", "debian", "latest"),
    ("debian:bookworm-slim@sha256:" + "0" * 64, "debian", "bookworm-slim"),
])
def test_split(reference, repository, tag):
    assert refs.split(reference) == (repository, tag)


def test_names():
    assert refs.repository_name("r.example:5000/a/pytorch-cuda:1") == "pytorch-cuda"
    assert refs.tag_of("pytorch-cuda") == "latest" and refs.split("pytorch-cuda", default_tag="") == ("pytorch-cuda", "")
