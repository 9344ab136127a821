"""The few ways pytorch-cuda can fail, each with the fields the CLI needs for a one-line message.

Raised deep inside; turned into a message and an exit code only at the CLI edge (cli.py).
"""
from __future__ import annotations


class PytorchCudaError(Exception):
    """Base class: `str(err)` is the one-line message shown to the user."""

    exit_code = 1


class UsageError(PytorchCudaError):
    """Bad flags or values the user can fix by changing the command line."""

    exit_code = 2


class UnknownVersion(UsageError):
    """A torch, CUDA or Python version that is not in the matrix at all."""

    def __init__(self, what: str, value: str, supported: list[str]) -> None:
        self.what, self.value, self.supported = what, value, supported
        super().__init__(f"{what} {value} is not in the matrix; supported: {', '.join(supported)}")


class IncompatibleCombination(UsageError):
    """Each version exists, but no build combines them."""

    def __init__(self, asked: str, existing: list[str]) -> None:
        self.asked, self.existing = asked, existing
        super().__init__(f"no build for {asked}; combinations that exist: {'; '.join(existing)}")


class NoCompatibleTag(UsageError):
    """No tag of the matrix fits this host's GPUs and driver (`--cuda auto`), or it has no GPU to fit."""


class MatrixError(PytorchCudaError):
    """The matrix data files are missing or malformed."""


class DockerUnavailable(PytorchCudaError):
    """The Docker daemon cannot be reached."""


class BaseImageError(PytorchCudaError):
    """The base image is missing and could not be pulled or made locally."""


class BuildFailed(PytorchCudaError):
    """A Dockerfile step failed; carries the step and the tail of the log."""

    def __init__(self, tag: str, step: str, message: str, log_tail: list[str]) -> None:
        self.tag, self.step, self.message, self.log_tail = tag, step, message, log_tail
        super().__init__(f"build of {tag} failed at {step or 'an unknown step'}: {message}")


class RegistryError(PytorchCudaError):
    """A registry refused a release step (a push, an index, an alias) or lacks what it names."""


class PushFailed(RegistryError):
    """The registry refused a push."""


class IndexIncomplete(RegistryError):
    """What an alias would name lacks a platform of its tag: the alias stays where it was."""


class NothingPushed(PytorchCudaError):
    """A release stopped before its first push: an image of the set is not here, did not pass, or not clean."""


class UnknownAlias(UsageError):
    """A name that is no short alias of any tag of the matrix."""
