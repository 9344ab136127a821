"""``python -m tools.matrixgen``: regenerate images/matrix.json, or ``--check`` that it is current.

The file is rewritten only when its content changes, in one canonical text (sorted keys, 2-space
indent), so a re-run gives no diff and a review sees only what the wheels changed. Exit codes:
0 done (or up to date), 1 ``--check`` found the file out of date, 2 the matrix could not be read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from packaging.version import InvalidVersion, Version

from pytorch_cuda import matrix

from . import RefreshError
from .entries import Refresher, sort_builds
from .pins import read_devel, read_drivers
from .wheelmeta import PYPI_SIMPLE, WheelMetaError

logger = logging.getLogger(__name__)

# What images/matrix.json records as its generator.
GENERATED_BY = "python -m tools.matrixgen"
DEFAULT_OUTPUT = matrix.MATRIX_FILE
DEFAULT_DRIVERS = matrix.IMAGES_DIR / "cuda_drivers.json"
DEFAULT_DEVEL = matrix.IMAGES_DIR / "cuda_devel.json"
DEFAULT_SINCE = "2.1"


def dump_matrix_json(doc: Mapping[str, Any]) -> str:
    """The file's exact text: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def merge(
    existing: Mapping[str, Any] | None,
    builds: Sequence[dict[str, Any]],
    indexes: Mapping[str, str],
    in_scope: Callable[[Mapping[str, Any]], bool],
    today: str,
) -> dict[str, Any]:
    """The new document: existing entries outside the refreshed scope are kept.

    ``generated_on`` only moves when the content changes, so a re-run gives no diff.
    """
    kept = [b for b in (existing or {}).get("builds", []) if not in_scope(b)]
    all_indexes = dict((existing or {}).get("indexes", {}))
    all_indexes.update(indexes)
    used = {b["index"] for b in kept} | {b["index"] for b in builds}
    doc = {
        "schema": matrix.SCHEMA,
        "generated_by": GENERATED_BY,
        "generated_on": today,
        "indexes": {k: v for k, v in sorted(all_indexes.items()) if k in used or k in indexes},
        "builds": sort_builds([*kept, *builds]),
    }
    if existing and existing.get("generated_on"):
        same = dict(doc, generated_on=existing["generated_on"])
        if dump_matrix_json(same) == dump_matrix_json(existing):
            return same
    return doc


def parse_index(arg: str) -> tuple[str, str]:
    """``cu121=https://...`` -> (cu121, url); a bare URL is named after its last segment."""
    if "=" in arg and not arg.startswith(("http://", "https://")):
        name, url = arg.split("=", 1)
    else:
        url = arg
        name = "pypi" if url.rstrip("/") == PYPI_SIMPLE else url.rstrip("/").rsplit("/", 1)[-1]
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise argparse.ArgumentTypeError(f"bad index name {name!r}")
    return name, url.rstrip("/")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.matrixgen",
        description="Regenerate images/matrix.json from torch wheel metadata.",
    )
    parser.add_argument("--since", default=DEFAULT_SINCE, help="oldest torch release (2.1)")
    parser.add_argument(
        "--index", action="append", type=parse_index, metavar="[NAME=]URL",
        help="simple index to read (repeatable); default: pypi=" + PYPI_SIMPLE,
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--drivers", type=Path, default=DEFAULT_DRIVERS)
    parser.add_argument("--devel", type=Path, default=DEFAULT_DEVEL, help="apt repository and component versions "
                        "of CUDA 12 compilers")
    parser.add_argument(
        "--only-torch", action="append", default=[], metavar="VERSION",
        help="refresh only this torch release (repeatable); other entries are kept",
    )
    parser.add_argument("--jobs", type=int, default=8, help="releases read in parallel")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the output file would change")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(message)s")

    indexes = dict(args.index or [("pypi", PYPI_SIMPLE)])
    start = time.monotonic()
    try:
        floor = Version(args.since)
        for v in args.only_torch:
            Version(v)
        refresher = Refresher(indexes, read_drivers(args.drivers), jobs=args.jobs, devel=read_devel(args.devel))
        builds = refresher.run(args.since, args.only_torch)
    except (RefreshError, WheelMetaError, InvalidVersion, OSError, ValueError) as exc:
        logger.error("%s", exc)
        return 2

    def in_scope(b: Mapping[str, Any]) -> bool:
        return (
            b["index"] in indexes
            and Version(b["torch"]) >= floor
            and (not args.only_torch or b["torch"] in args.only_torch)
        )

    existing = json.loads(args.output.read_text()) if args.output.exists() else None
    doc = merge(existing, builds, indexes, in_scope, dt.date.today().isoformat())
    text = dump_matrix_json(doc)
    old = args.output.read_text() if args.output.exists() else None
    logger.info(
        "%d builds in %.1f s; %d requests, %.1f MB; metadata: %d PEP 658, %d by Range",
        len(builds), time.monotonic() - start, refresher.http.requests,
        refresher.http.bytes / 1e6, refresher.meta.via_pep658, refresher.meta.via_range,
    )
    if args.check:
        if text != old:
            logger.error("%s is out of date", args.output)
            return 1
        return 0
    if text != old:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        logger.info("wrote %s", args.output)
    else:
        logger.info("%s unchanged", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
