"""The errors the CLI turns into one-line messages and exit codes, and how to name a failure's cause."""
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


def root_cause(err: BaseException) -> str:
    """The innermost exception under `err` ("raise ... from", or raised while handling), in one line:
    its type and the last line of its message, where the cause is, not the first line of a wrapper."""
    seen = {id(err)}
    while True:
        inner = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        err = inner
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        message = err.args[0]  # str(KeyError) quotes its key
    else:
        message = str(err)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1]}" if lines else type(err).__name__
