"""Test-only fault injection, so the test suite can prove each check fails when it should.

`VERIFY_FAULT=check:kind[,check:kind...]` is read only inside the child that runs `check`. A fault
can only break a check, never make one pass, and a result produced under a fault says so in its
reason and figures. Kinds every check understands are below; a check may declare more in FAULTS.
`check:kind@R` aims the fault at one rank of a distributed run: only the process whose RANK is R
sees it, so a test can break rank 1 and watch rank 0 name it.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Mapping, Optional

ENV_VAR = "VERIFY_FAULT"
GENERIC = ("hang", "crash", "raise")


def raw_for(check: str, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The fault aimed at `check` as written ('hang@1'), whichever rank it is aimed at; or None."""
    spec = (os.environ if environ is None else environ).get(ENV_VAR, "")
    for item in spec.split(","):
        name, _, kind = item.strip().partition(":")
        if name == check and kind:
            return kind
    return None


def fault_for(check: str, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The fault kind aimed at `check` in this process, or None (a fault for another rank is None)."""
    environ = os.environ if environ is None else environ
    kind = raw_for(check, environ)
    if kind is None or "@" not in kind:
        return kind
    kind, _, rank = kind.partition("@")
    return kind if rank.strip() == environ.get("RANK", "0").strip() else None


def apply_generic(kind: str) -> None:
    """Misbehave as a broken library would: never return, die on a signal, or raise."""
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(60)  # the signal is delivered before this returns
    if kind == "raise":
        raise RuntimeError("injected failure (VERIFY_FAULT)")
