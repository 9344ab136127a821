"""`verify` / `python -m verify`: run the checks, print a table, write reports; exit 0, 1 or 2.

0: nothing failed (warnings and skips allowed). 1: a check failed. 2: usage error (one line on stderr).
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import socket
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from verify import manifest as manifest_file
from verify import registry, runner
from verify.errors import EXIT_USAGE, UsageError, VerifyError
from verify.manifest import Manifest
from verify.report import jsonfile, junit, table
from verify.result import CheckResult, Report, Status

log = logging.getLogger("verify")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so every usage error is one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="verify", description=(
        "Check that this environment can train on a GPU, and say why not. Checks: " + ", ".join(registry.NAMES)
        + ". Each runs in its own process with a timeout."))
    parser.add_argument("--json", metavar="PATH", help="write the JSON report here")
    parser.add_argument("--junit", metavar="PATH", help="write JUnit XML here")
    parser.add_argument("--only", action="append", metavar="A,B", help="run only these checks")
    parser.add_argument("--skip", action="append", metavar="A,B", help="do not run these checks")
    parser.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    parser.add_argument("--perf", action="store_true", help="also measure GPU throughput (opt-in, GPU only)")
    parser.add_argument("--require-gpu", action="store_true",
                        help="treat 'no GPU' as a failure in every check that needs one (GPU CI runners)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="per-check timeout in seconds (default: each check's own, 120-300 s)")
    parser.add_argument("--manifest", metavar="PATH", help=(
        f"the image's promise (default: ${manifest_file.ENV_VAR}, else {manifest_file.DEFAULT_PATH})"))
    return parser


def _output_path(path: Optional[str], flag: str) -> Optional[str]:
    if path is None:
        return None
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{flag} {path}: directory {directory} does not exist")
    return path


class _Printer:
    """Prints rows in report order as soon as every earlier check has ended."""

    def __init__(self, order: Sequence[str], quiet: bool) -> None:
        self.order = list(order)
        self.quiet = quiet
        self.done: Dict[str, CheckResult] = {}
        self.printed = 0
        if not quiet:
            print(table.header(), flush=True)

    def take(self, result: CheckResult) -> None:
        if result.name not in self.order:
            return
        self.done[result.name] = result
        while self.printed < len(self.order) and self.order[self.printed] in self.done:
            current = self.done[self.order[self.printed]]
            if not self.quiet or current.status is Status.FAIL:
                print(table.row(current), flush=True)
            self.printed += 1


def _fingerprint(probe: CheckResult, manifest: Optional[Manifest], started: datetime.datetime) -> Dict[str, Any]:
    found = probe.figures if probe.status is Status.PASS else {}
    fingerprint: Dict[str, Any] = {
        "hostname": socket.gethostname(),
        "time": started.isoformat(timespec="seconds"),
        "python": found.get("python", platform.python_version()),
        "torch": found.get("torch"),
        "cuda": found.get("cuda"),
        "cudnn": found.get("cudnn"),
        "nccl": found.get("nccl"),
        "driver": found.get("driver"),
        "gpus": found.get("gpus", []),
        "manifest": manifest.path if manifest else None,
        "tag": manifest.tag if manifest else None,
    }
    if probe.status is not Status.PASS:
        fingerprint["error"] = probe.reason
    return fingerprint


def _not_requested() -> CheckResult:
    return CheckResult("perf", Status.SKIP, "not requested: pass --perf to measure GPU throughput", 0.0, {},
                       "not requested")


def run(args: argparse.Namespace) -> int:
    specs = registry.select(args.only, args.skip, args.perf)
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    json_path = _output_path(args.json, "--json")
    junit_path = _output_path(args.junit, "--junit")
    manifest = manifest_file.load(args.manifest)
    skipped = {name.strip() for value in args.skip or () for name in value.split(",")}
    placeholder = None
    if not args.only and "perf" not in skipped and all(spec.name != "perf" for spec in specs):
        placeholder = _not_requested()

    names = [spec.name for spec in specs] + ([placeholder.name] if placeholder else [])
    if not args.quiet:
        print(f"verify: running {', '.join(spec.name for spec in specs)}, each in its own process"
              + (f" (manifest {manifest.path})" if manifest else " (no manifest)"), file=sys.stderr, flush=True)
    printer = _Printer(names, args.quiet)
    started_wall = datetime.datetime.now(datetime.timezone.utc)
    started = time.monotonic()
    options = runner.RunOptions(manifest=manifest, require_gpu=args.require_gpu, timeout_s=args.timeout)
    results = runner.run([registry.FINGERPRINT, *specs], options, on_result=printer.take)
    probe, checks = results[0], results[1:]
    if placeholder:
        checks.append(placeholder)
        printer.take(placeholder)
    report = Report(checks, _fingerprint(probe, manifest, started_wall), time.monotonic() - started)
    print(report.summary(), flush=True)

    if json_path:
        with open(json_path, "w", encoding="utf-8") as handle:
            handle.write(jsonfile.render(report))
    if junit_path:
        with open(junit_path, "w", encoding="utf-8") as handle:
            handle.write(junit.render(report))
    return report.exit_code


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="verify: %(message)s")
    try:
        return run(build_parser().parse_args(argv))
    except UsageError as err:
        print(f"verify: {err} (see verify --help)", file=sys.stderr)
        return EXIT_USAGE
    except VerifyError as err:
        print(f"verify: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("verify: interrupted", file=sys.stderr)
        return 130
