"""The errors the CLI turns into one-line messages and exit codes."""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class VerifyError(Exception):
    """Base of every error verify raises on purpose."""

    exit_code = EXIT_FAILED


class UsageError(VerifyError):
    """The command line asks for something that cannot be done: exit 2 before any check runs."""

    exit_code = EXIT_USAGE


class ManifestError(UsageError):
    """The manifest named by --manifest or PYTORCH_CUDA_MANIFEST is missing or malformed."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"manifest {path}: {problem}")
        self.path = path
        self.problem = problem


class RunnerError(VerifyError):
    """The process that runs the checks could not be started or died."""
