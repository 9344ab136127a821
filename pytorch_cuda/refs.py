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
