"""Image references ('[registry[:port]/]repository[:tag][@digest]'): the one parser. Pure, no Docker."""
from __future__ import annotations


def split(reference: str, default_tag: str = "latest") -> tuple[str, str]:
    """(repository, tag): 'registry:5000/pytorch-cuda:2.4.1-x' -> ('registry:5000/pytorch-cuda', '2.4.1-x').

    A reference without a tag gets `default_tag` ('latest', as docker says); a digest ('@sha256:...')
    is dropped: these helpers name tags.
    """
    reference = reference.split("@", 1)[0]
    name, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag or not name:  # no tag, or the colon was a registry's port
        return reference, default_tag
    return name, tag


def repository_name(reference: str) -> str:
    """The last path part of the repository: 'ghcr.io/acme/pytorch-cuda:x' -> 'pytorch-cuda'."""
    return split(reference)[0].rsplit("/", 1)[-1]


def tag_of(reference: str) -> str:
    return split(reference)[1]


def registry_host(reference: str) -> str:
    """The registry's host of a reference, without its port: 'localhost:5000/x:y' -> 'localhost';
    'docker.io' for a reference without one (the first part names a registry only with a dot, a
    colon, or as 'localhost', as docker reads it)."""
    first, slash, _ = split(reference)[0].partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first.rsplit(":", 1)[0] if not first.startswith("[") else first.split("]", 1)[0] + "]"
    return "docker.io"
