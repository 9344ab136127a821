"""`verify` / `python -m verify`: run the checks, print a table, write reports; exit 0, 1 or 2.

0: nothing failed (warnings and skips allowed). 1: a check failed. 2: usage error (one line on stderr).

Distributed mode (--distributed, or WORLD_SIZE > 1 as under torchrun): every process runs the
`distributed` check together; rank 0 prints the report and writes --json/--junit, every other rank
prints one line and exits with the verdict rank 0 gave. Other checks run only when --only names
them, and then once per node (on LOCAL_RANK 0), each node reporting its own.
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

from verify import catalog, ranks, runner
from verify import manifest as manifest_file
from verify.catalog import CheckSpec
from verify.errors import EXIT_USAGE, UsageError, VerifyError
from verify.manifest import Manifest
from verify.report import jsonfile, junit, table
from verify.result import CheckResult, Report, Status

log = logging.getLogger("verify")

# A failing rank other than 0 waits this long before it exits: torchrun (and srun, mpirun) stop every
# process of a node once one fails, and rank 0 must first finish its fingerprint and write the report.
# When rank 0 exits first, the launcher ends the wait.
FOLLOWER_LINGER_S = 20.0


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so every usage error is one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="verify", description=(
        "Check that this environment can train on a GPU, and say why not. Checks: " + ", ".join(catalog.NAMES)
        + ". Each runs in its own process with a timeout."))
    parser.add_argument("--json", metavar="PATH", help="write the JSON report here ('-': to stdout, after the "
                                                       "summary line, e.g. for a Kubernetes pod's log)")
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
    parser.add_argument("--distributed", action="store_true", help=(
        "check the whole job across ranks and nodes (implied by WORLD_SIZE > 1, as under torchrun; needs "
        "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): only the distributed check runs unless "
        "--only names others; rank 0 reports, the other ranks print one line"))
    parser.add_argument("--backend", choices=("nccl", "gloo"),
                        help="distributed mode's process-group backend (default: nccl with GPUs, else gloo)")
    return parser


def _output_path(path: Optional[str], flag: str) -> Optional[str]:
    if path is None or (path == "-" and flag == "--json"):
        return path
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
        "machine": platform.machine(),  # the CPU the container sees: x86_64, aarch64 (Grace parts)
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
        "lock_digest": manifest.lock_digest if manifest else None,
    }
    if probe.status is not Status.PASS:
        fingerprint["error"] = probe.reason
    fingerprint["runner"] = probe.figures.get("runner")
    return fingerprint


def _not_requested() -> CheckResult:
    return CheckResult("perf", Status.SKIP, "not requested: pass --perf to measure GPU throughput", 0.0, {},
                       "not requested")


def _distributed_bandwidth(results: Sequence[CheckResult]) -> List[str]:
    """nccl-tests' table for the distributed check, under the report's table."""
    result = next((r for r in results if r.name == "distributed"), None)
    rows = (result.figures.get("bandwidth") or []) if result else []
    if result is None or not rows:
        return []
    lines = [f"distributed all-reduce, {ranks.plural(result.figures.get('world_size', 0), 'rank')} on "
             f"{ranks.plural(result.figures.get('nodes', 0), 'node')}, {result.figures.get('backend')} "
             f"(time of the slowest rank):",
             f"{'SIZE':>10}  {'TIME (us)':>11}  {'ALGBW (GB/s)':>12}  {'BUSBW (GB/s)':>12}"]
    for row in rows:
        lines.append(f"{ranks.human_bytes(row['bytes']):>10}  {row['time_us']:>11.1f}  {row['algbw_gbps']:>12.3f}  "
                     f"{row['busbw_gbps']:>12.3f}")
    return lines


def _one_line(launch: ranks.Launch, report: Report) -> str:
    """What a rank other than 0 prints: where it is, and how the run ended for it."""
    shown = [r for r in report.results if r.name == "distributed" or r.status is Status.FAIL]
    what = "; ".join(f"{r.name} {r.status.label}: {' '.join(r.reason.split())}" for r in shown) or "nothing failed"
    return (f"verify: rank {launch.rank} of {launch.world_size} on {socket.gethostname()}: {what} "
            f"(exit {report.exit_code}; rank 0 prints the report)")


def run(args: argparse.Namespace) -> int:
    launch = ranks.detect(os.environ, args.distributed)
    if args.backend and launch is None:
        raise UsageError("--backend applies only in distributed mode (--distributed, or under torchrun)")
    specs = catalog.select(args.only, args.skip, args.perf, distributed=launch is not None)
    if launch is not None and launch.local_rank != 0:
        specs = [spec for spec in specs if spec.gang]  # single-process checks: once per node is enough
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    json_path = _output_path(args.json, "--json")
    junit_path = _output_path(args.junit, "--junit")
    manifest = manifest_file.load(args.manifest)
    if launch is not None and launch.rank != 0:
        return _run_follower(launch, specs, args, manifest)
    skipped = {name.strip() for value in args.skip or () for name in value.split(",")}
    placeholder = None
    if launch is None and not args.only and "perf" not in skipped and all(spec.name != "perf" for spec in specs):
        placeholder = _not_requested()

    names = [spec.name for spec in specs] + ([placeholder.name] if placeholder else [])
    if not args.quiet:
        print(f"verify: running {', '.join(spec.name for spec in specs)}, each in its own process"
              + (f" (manifest {manifest.path})" if manifest else " (no manifest)"), file=sys.stderr, flush=True)
    printer = _Printer(names, args.quiet)
    started_wall = datetime.datetime.now(datetime.timezone.utc)
    started = time.monotonic()
    options = runner.RunOptions(manifest=manifest, require_gpu=args.require_gpu, timeout_s=args.timeout,
                                backend=args.backend)
    results = runner.run([catalog.FINGERPRINT, *specs], options, on_result=printer.take)
    probe, checks = results[0], results[1:]
    if placeholder:
        checks.append(placeholder)
        printer.take(placeholder)
    fingerprint = _fingerprint(probe, manifest, started_wall)
    if launch is not None:
        fingerprint["launch"] = {"rank": launch.rank, "world_size": launch.world_size,
                                 "master": f"{launch.master_addr}:{launch.master_port}"}
    report = Report(checks, fingerprint, time.monotonic() - started)
    if not args.quiet:
        for line in _distributed_bandwidth(checks):
            print(line, flush=True)
        for note in (fingerprint["runner"] or {}).get("serial_reason"), (fingerprint["runner"] or {}).get("why"):
            if note:
                print(f"verify: note: {note}", file=sys.stderr, flush=True)
    print(report.summary(), flush=True)

    if json_path == "-":
        print(jsonfile.render(report), end="", flush=True)
    elif json_path:
        with open(json_path, "w", encoding="utf-8") as handle:
            handle.write(jsonfile.render(report))
    if junit_path:
        with open(junit_path, "w", encoding="utf-8") as handle:
            handle.write(junit.render(report))
    return report.exit_code


def _run_follower(launch: ranks.Launch, specs: Sequence[CheckSpec], args: argparse.Namespace,
                  manifest: Optional[Manifest]) -> int:
    """A rank other than 0: the same checks, no table and no report files (rank 0 writes those)."""
    options = runner.RunOptions(manifest=manifest, require_gpu=args.require_gpu, timeout_s=args.timeout,
                                backend=args.backend)
    if not specs:
        print(f"verify: rank {launch.rank} of {launch.world_size}: nothing to run here (LOCAL_RANK "
              f"{launch.local_rank}: single-process checks run on LOCAL_RANK 0 only)", flush=True)
        return 0
    started = time.monotonic()
    report = Report(runner.run(specs, options), {}, time.monotonic() - started)
    print(_one_line(launch, report), flush=True)
    if report.exit_code != 0:
        time.sleep(FOLLOWER_LINGER_S)
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
