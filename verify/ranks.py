"""Distributed mode's pure side: the launcher's variables, and what rank 0 makes of every rank's record.

Standard library only: the CLI imports this to decide on distributed mode and never imports torch.
The torch side (joining the group, the collectives, the exchange of records) is checks/distributed.py.

A record is the JSON dict one rank posts when it is done, whatever happened to it:
  {"rank": 1, "host": "node-b", "local_rank": 0, "device": "cuda:0 (NVIDIA H100 80GB HBM3)",
   "gpu_missing": null, "error": null, "contributed": 2.0, "value": 3.0, "exact": true,
   "compute_s": 0.031, "times_s": {"1048576": 0.0004, ...}}
`error` is "phase: Type: message" when the rank failed; a rank that posts nothing hung or died.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from verify import perfmath
from verify.errors import UsageError
from verify.result import Findings, Outcome, Status

REQUIRED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SLOW_FACTOR = 2.0  # a rank slower than this many times the median of the others is named
SLOW_FLOOR_S = 0.02  # ...and only when that is also this much slower: timer noise is not a straggler
NAMED_AT_MOST = 4  # ranks named one by one in a reason; the rest are counted
# Errors a rank gets from waiting on another: consequences, named after the ranks that caused them.
_WAITING = re.compile(r"timed out|timeout|connection (reset|closed|refused)|broken pipe|peer|eof", re.IGNORECASE)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the job, from the variables torchrun and other launchers set."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    agent_store: bool  # torchrun's agent already serves a store at MASTER_ADDR:MASTER_PORT
    run_id: str  # keys in a store shared with other runs (torchrun's) live under this prefix

    @property
    def hosts_store(self) -> bool:
        """Rank 0 serves the store itself unless torchrun's agent does."""
        return self.rank == 0 and not self.agent_store


def _integer(environ: Mapping[str, str], name: str) -> int:
    text = environ[name].strip()
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name}={environ[name]!r} is not a whole number") from None


def detect(environ: Mapping[str, str], requested: bool) -> Optional[Launch]:
    """The launch, in distributed mode (--distributed, or WORLD_SIZE > 1); None otherwise."""
    world_text = environ.get("WORLD_SIZE", "").strip()
    if not requested and (not world_text or _integer(environ, "WORLD_SIZE") <= 1):
        return None
    missing = [name for name in REQUIRED if not environ.get(name, "").strip()]
    if missing:
        raise UsageError(f"distributed mode needs {', '.join(REQUIRED)} set; {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not (run it under torchrun, or set them)")
    rank, world, local_rank, port = (_integer(environ, name)
                                     for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"))
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    if local_rank < 0 or not 0 < port < 65536:
        raise UsageError(f"LOCAL_RANK={local_rank} and MASTER_PORT={port} must be >= 0 and a TCP port")
    agent = environ.get("TORCHELASTIC_USE_AGENT_STORE", "") == "True"
    run_id = f"{environ.get('TORCHELASTIC_RUN_ID', 'run')}/{environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return Launch(rank, world, local_rank, environ["MASTER_ADDR"].strip(), port, agent, run_id)


def expected_sum(world: int) -> float:
    """Rank r contributes r+1: 1+2+...+n. Small integers, so exact in float32 in any summation order."""
    return world * (world + 1) / 2


def human_bytes(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def bandwidth(records: Mapping[int, Mapping[str, Any]], world: int) -> List[Dict[str, Any]]:
    """nccl-tests' table: per message size, the slowest rank's time per all-reduce, algbw and busbw.

    A collective is done when its slowest rank is, so the time is the maximum over ranks; sizes
    that some rank did not time (it failed first) are left out rather than guessed.
    """
    per_size: Dict[int, List[float]] = {}
    for record in records.values():
        for size, seconds in (record.get("times_s") or {}).items():
            per_size.setdefault(int(size), []).append(float(seconds))
    rows = []
    for size in sorted(per_size):
        times = per_size[size]
        if len(times) != world or world < 2 or min(times) <= 0:
            continue
        seconds = max(times)
        algbw = size / seconds / 1e9
        rows.append({"bytes": size, "time_us": round(seconds * 1e6, 1), "algbw_gbps": round(algbw, 3),
                     "busbw_gbps": round(perfmath.bus_bandwidth(algbw, world), 3)})
    return rows


def slow_ranks(times: Mapping[int, float], factor: float = SLOW_FACTOR,
               floor_s: float = SLOW_FLOOR_S) -> List[Tuple[int, float, float]]:
    """(rank, its time, the median of the others) for each rank more than `factor` times slower.

    Compared with the others' median, not the overall one: with two ranks the overall median is
    their mean, which no rank can exceed twofold.
    """
    slow = []
    for rank, seconds in sorted(times.items()):
        others = [value for other, value in times.items() if other != rank]
        if not others:
            continue
        median = statistics.median(others)
        if seconds > factor * median and seconds - median > floor_s:
            slow.append((rank, seconds, median))
    return slow


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _ranks(numbers: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:NAMED_AT_MOST])
    more = len(numbers) - NAMED_AT_MOST
    return ("rank " if len(numbers) == 1 else "ranks ") + shown + (f" and {more} more" if more > 0 else "")


def summarize(records: Mapping[int, Mapping[str, Any]], world: int, backend: str, waited_s: float,
              require_gpu: bool = False) -> Outcome:
    """Rank 0's verdict on the whole group from the records that arrived within `waited_s`."""
    found = Findings()
    hosts = sorted({str(record.get("host")) for record in records.values()})
    expected = expected_sum(world)
    found.figures.update({
        "world_size": world, "nodes": len(hosts), "hosts": hosts, "backend": backend,
        "ranks_reported": len(records), "allreduce_expected": expected,
        "allreduce_values": [records[r].get("value") if r in records else None for r in range(world)],
        "ranks": [dict(records[r]) if r in records else {"rank": r, "missing": True} for r in range(world)],
    })
    found.key_figure = f"{backend} x{world}, {plural(len(hosts), 'node')}"

    missing = [rank for rank in range(world) if rank not in records]
    if missing:
        found.fail(f"{_ranks(missing)} of {world} did not report within {waited_s:.0f} s (hung, crashed or "
                   f"never started)")
    failed = [rank for rank in sorted(records) if records[rank].get("error")]
    # Causes first: a rank that raised by itself, then those that timed out waiting for it.
    for rank in sorted(failed, key=lambda r: bool(_WAITING.search(records[r]["error"])))[:NAMED_AT_MOST]:
        found.fail(f"rank {rank} on {records[rank].get('host')} failed at {records[rank]['error']}")
    if len(failed) > NAMED_AT_MOST:
        found.fail(f"{len(failed) - NAMED_AT_MOST} more rank(s) failed")
    wrong = [rank for rank in sorted(records) if records[rank].get("exact") is False]
    if wrong:
        culprits = [rank for rank in sorted(records) if records[rank].get("contributed") not in (None, rank + 1)]
        blame = "".join(f"; rank {rank} contributed {records[rank]['contributed']:g}, not {rank + 1}"
                        for rank in culprits[:NAMED_AT_MOST])
        found.fail(f"all-reduce gave {records[wrong[0]].get('value')} on {_ranks(wrong)}, expected exactly "
                   f"{expected:g}{blame}")
    no_gpu = [rank for rank in sorted(records) if records[rank].get("gpu_missing")]
    if require_gpu and no_gpu:
        found.fail(f"{_ranks(no_gpu)} had no GPU ({records[no_gpu[0]]['gpu_missing']}; --require-gpu)")

    compute = {rank: float(record["compute_s"]) for rank, record in records.items()
               if record.get("compute_s") is not None}
    rows = bandwidth(records, world)
    largest = str(rows[-1]["bytes"]) if rows else None
    found.figures.update({
        "bandwidth": rows, "busbw_gbps": rows[-1]["busbw_gbps"] if rows else None,
        "rank_compute_s": [compute.get(rank) for rank in range(world)],
        "rank_allreduce_s": [(records[r].get("times_s") or {}).get(largest) if r in records and largest else None
                             for r in range(world)],
        "missing_ranks": missing, "failed_ranks": failed,
    })
    slow = slow_ranks(compute)
    found.figures["slow_ranks"] = [rank for rank, _, _ in slow]
    for rank, seconds, median in slow[:NAMED_AT_MOST]:
        found.warn(f"rank {rank} on {records[rank].get('host')} is slow: the same local matmuls took "
                   f"{seconds:.3f} s, more than {SLOW_FACTOR:g}x the {median:.3f} s median of the other ranks")
    if rows:
        found.key_figure = f"busbw {rows[-1]['busbw_gbps']:g} GB/s" if backend == "nccl" else found.key_figure

    if world == 1 and backend == "nccl" and not found.failed:
        # One rank talks to nobody: NCCL builds a communicator but opens no P2P, SHM or network
        # transport, so a pass would claim what was never exercised.
        found.warn("1 rank: NCCL ran but no transport (P2P, shared memory, network) was exercised; launch "
                   "2 or more ranks (--nproc-per-node) to prove them")
    where = f"{plural(world, 'rank')} on {plural(len(hosts), 'node')}"
    detail = (f"; bus bandwidth {rows[-1]['busbw_gbps']:g} GB/s at {human_bytes(rows[-1]['bytes'])}"
              if rows else " (1 rank: no bandwidth to measure)")
    note = ""
    if backend == "gloo" and no_gpu:
        note = f" ({records[no_gpu[0]]['gpu_missing']}: NCCL not exercised)"
    return found.outcome(f"exact {backend} all-reduce over {where}{detail}{note}")


def verdict(outcome: Outcome) -> Dict[str, str]:
    """What rank 0 tells every other rank, so each exits as rank 0 does."""
    return {"status": outcome.status.value, "reason": outcome.reason}


def follower_outcome(record: Mapping[str, Any], told: Optional[Mapping[str, str]], waited_s: float) -> Outcome:
    """A non-zero rank's own result: rank 0's verdict, or why there was none; its record as figures."""
    figures = {"rank": dict(record)}
    own = f"; this rank failed at {record['error']}" if record.get("error") else ""
    if told is None:
        return Outcome(Status.FAIL, f"no verdict from rank 0 within {waited_s:.0f} s (rank 0 died, hung or "
                                    f"is unreachable){own}", figures, "no verdict")
    status = Status(told["status"])
    if record.get("error"):
        status = Status.FAIL
    return Outcome(status, f"rank 0 reports: {told['reason']}{own}", figures, f"rank {record.get('rank')}")
