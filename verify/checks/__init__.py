"""One module per check. Each exposes `run(context) -> Outcome` and runs inside its own process.

A module may list extra test-only fault kinds in FAULTS (see `verify.faults`).
"""
