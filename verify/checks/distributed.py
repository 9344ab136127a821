"""distributed: every rank of a torchrun (or any RANK/WORLD_SIZE launcher) job checks the group together.

Each rank joins the process group (NCCL when it has a GPU, else gloo; --backend forces one), takes
part in an all-reduce whose answer is known exactly (rank r contributes r+1), times the same local
matmuls (to find a straggler) and all-reduces of a few sizes, then posts one record to the job's
key-value store. Rank 0 waits for every record until a deadline, names the ranks that failed, hung
or never came, computes nccl-tests' bus bandwidth, and posts a verdict that every rank exits with.

Results travel through the store, not through collectives: a collective cannot complete once a rank
is gone, but a store key that never appears is simply a rank to name. Every collective has a
timeout (gloo raises; NCCL raises too, with TORCH_NCCL_BLOCKING_WAIT and torch 2.1's NCCL_BLOCKING_WAIT set here), and all waits end
before the runner's own timeout for this check, so a dead rank becomes a failure, never a hang.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from datetime import timedelta
from typing import Any, Dict, MutableMapping, Optional

import torch
import torch.distributed as dist

from verify import faults, ranks
from verify.checks._collective import allreduce_seconds, synchronize
from verify.checks._common import gpu_missing_reason
from verify.context import CheckContext
from verify.result import Outcome, Status

FAULTS = ("hang", "raise", "crash", "slow", "wrong-sum")  # each aimed at one rank with @R (faults.py)
ELEMENTS = 4096
NCCL_SIZES = (1 << 20, 32 << 20, 256 << 20)  # bytes per all-reduce; nccl-tests' large end reaches busbw
GLOO_SIZES = (64 << 10, 1 << 20, 4 << 20)
NCCL_ITERATIONS, GLOO_ITERATIONS = 20, 10
WARMUP = 3
COMPUTE_N = {"cuda": 4096, "cpu": 256}  # matrix side for the local timing; a few ms to 100 ms
COMPUTE_ITERATIONS = 10
COMPUTE_REPEATS = 3  # the best of three: a one-off hiccup is not a straggler
SLOW_FAULT_S = 0.3
POLL_S = 0.2
# Shares of the check's timeout: each collective, rank 0's wait for records, the others' wait for
# the verdict. The runner kills the check at 1.0.
COLLECTIVE_SHARE, COLLECT_SHARE, VERDICT_SHARE = 0.25, 0.75, 0.88


def _first_line(err: BaseException) -> str:
    """'Type: message', without the C++ source location gloo and c10d put in front."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    message = re.sub(r"^\[[^\]]*:\d+\]\s*", "", lines[0]) if lines else "(no message)"
    return f"{type(err).__name__}: {message}"[:300]


def _connect(launch: ranks.Launch, timeout: timedelta) -> dist.Store:
    """The job's store: torchrun's agent serves one at MASTER_ADDR:MASTER_PORT; otherwise rank 0 does.

    wait_for_workers=False: rank 0 must not block here for a rank that never comes, or it could
    not name it.
    """
    store = dist.TCPStore(launch.master_addr, launch.master_port, None, launch.hosts_store, timeout,
                          wait_for_workers=False)
    return dist.PrefixStore(f"verify/{launch.run_id}", store)


def _choose_backend(store: dist.Store, launch: ranks.Launch, forced: Optional[str], missing: Optional[str]) -> str:
    """Rank 0 picks and posts it; every rank uses rank 0's choice, so a node without GPUs fails loudly
    instead of starting a gloo group the others, on NCCL, would never join."""
    if launch.rank == 0:
        backend = forced or ("gloo" if missing else "nccl")
        store.set("backend", backend)
        return backend
    return store.get("backend").decode()


def _compute_seconds(device: torch.device, slow: bool) -> float:
    """The same matmuls on every rank: a rank much slower than the others is a straggler."""
    n = COMPUTE_N[device.type]
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up: kernel selection and allocation are not what is compared
    best = float("inf")
    for _ in range(COMPUTE_REPEATS):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(COMPUTE_ITERATIONS):
            a @ b
        if slow:
            time.sleep(SLOW_FAULT_S)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return round(best, 6)


def gpu_for_rank(local_rank: int, visible: int) -> int:
    """The GPU a rank uses: its LOCAL_RANK, or the only one it sees when the launcher gave each rank
    its own GPU (`srun --gpus-per-task=1`, a per-rank CUDA_VISIBLE_DEVICES)."""
    if visible == 1:
        return 0
    if local_rank >= visible:
        raise RuntimeError(f"LOCAL_RANK {local_rank} but {visible} GPU(s) visible: more processes per node than "
                           "GPUs (--nproc-per-node)?")
    return local_rank


def blocking_wait_variables(environ: MutableMapping[str, str]) -> None:
    """Make a timed-out NCCL collective raise instead of aborting the process: torch >= 2.2 reads
    TORCH_NCCL_BLOCKING_WAIT, torch 2.1 only NCCL_BLOCKING_WAIT, so both are set (unless the user did)."""
    for name in ("TORCH_NCCL_BLOCKING_WAIT", "NCCL_BLOCKING_WAIT"):
        environ.setdefault(name, "1")


def _work(launch: ranks.Launch, store: dist.Store, backend: str, missing: Optional[str], fault: Optional[str],
          collective_timeout: timedelta) -> Dict[str, Any]:
    """This rank's part; never raises: what went wrong, and in which phase, goes into the record."""
    record: Dict[str, Any] = {"rank": launch.rank, "host": socket.gethostname(), "local_rank": launch.local_rank,
                              "device": "cpu", "gpu_missing": missing, "error": None}
    phase = "init"
    try:
        device = torch.device("cpu")
        barrier: Dict[str, Any] = {}
        if backend == "nccl":
            if missing:
                raise RuntimeError(f"rank 0 chose nccl but this rank cannot use a GPU ({missing})")
            index = gpu_for_rank(launch.local_rank, torch.cuda.device_count())
            device = torch.device("cuda", index)
            torch.cuda.set_device(device)
            record["device"] = f"cuda:{index} ({torch.cuda.get_device_name(device)})"
            barrier = {"device_ids": [index]}
        dist.init_process_group(backend, store=dist.PrefixStore("group", store), rank=launch.rank,
                                world_size=launch.world_size, timeout=collective_timeout)

        phase = "all-reduce"
        if fault in faults.GENERIC:
            faults.apply_generic(fault)  # after joining: a rank that hangs or dies inside the job
        contributed = float(launch.rank + (2 if fault == "wrong-sum" else 1))
        tensor = torch.full((ELEMENTS,), contributed, dtype=torch.float32, device=device)
        dist.all_reduce(tensor)
        expected = ranks.expected_sum(launch.world_size)
        record.update({"contributed": contributed, "value": float(tensor[0]),
                       "exact": bool((tensor == expected).all())})

        phase = "local matmuls"
        record["compute_s"] = _compute_seconds(device, slow=fault == "slow")

        phase = "bandwidth"
        if launch.world_size > 1:
            sizes = NCCL_SIZES if backend == "nccl" else GLOO_SIZES
            iterations = NCCL_ITERATIONS if backend == "nccl" else GLOO_ITERATIONS
            record["times_s"] = {str(size): allreduce_seconds(device, size, iterations, WARMUP, barrier)
                                 for size in sizes}
        dist.barrier(**barrier)
        # No destroy_process_group(): it has no timeout, and gloo's (torch 2.4) hung on a busy host
        # after the other rank had left. This process ends with os._exit (see forkserver), group and all.
    except Exception as err:  # the group may be broken now: no more collectives, just report
        record["error"] = f"{phase}: {_first_line(err)}"
    return record


def _collect(store: dist.Store, world: int, deadline: float) -> Dict[int, Dict[str, Any]]:
    """Every record that arrives before `deadline`, keyed by rank."""
    records: Dict[int, Dict[str, Any]] = {}
    while True:
        for rank in range(world):
            if rank not in records and store.check([f"record/{rank}"]):
                records[rank] = json.loads(store.get(f"record/{rank}"))
        if len(records) == world or time.monotonic() >= deadline:
            return records
        time.sleep(POLL_S)


def _await_key(store: dist.Store, key: str, deadline: float) -> Optional[bytes]:
    while time.monotonic() < deadline:
        if store.check([key]):
            return store.get(key)
        time.sleep(POLL_S)
    return None


def _mark_fault(outcome: Outcome, fault: Optional[str]) -> None:
    """A fault aimed at another rank still marks rank 0's report: a result made under a fault says so."""
    aimed = faults.raw_for("distributed")
    if aimed and not fault:
        outcome.figures["fault_injected_in_job"] = aimed
        outcome.reason = f"[fault injected in the job: {aimed}] {outcome.reason}"


def run(ctx: CheckContext) -> Outcome:
    started = time.monotonic()
    launch = ranks.detect(os.environ, requested=True)
    assert launch is not None
    budget = ctx.timeout_s
    collective_timeout = timedelta(seconds=max(COLLECTIVE_SHARE * budget, 1.0))
    if ctx.backend == "nccl" or (ctx.backend is None and torch.cuda.is_available()):
        blocking_wait_variables(os.environ)
    missing = gpu_missing_reason()
    if ctx.backend and not dist.is_backend_available(ctx.backend):
        return Outcome(Status.FAIL, f"torch.distributed has no {ctx.backend} backend in this build", {}, ctx.backend)

    try:
        store = _connect(launch, collective_timeout)
        backend = _choose_backend(store, launch, ctx.backend, missing)
    except Exception as err:  # nowhere to post a record: rank 0 will name this rank as missing
        where = f"{launch.master_addr}:{launch.master_port}"
        return Outcome(Status.FAIL, f"rank {launch.rank} could not reach the job's store at {where} within "
                                    f"{collective_timeout.total_seconds():g} s: {_first_line(err)}",
                       {"rank": launch.rank, "world_size": launch.world_size}, "no rendezvous")

    record = _work(launch, store, backend, missing, ctx.fault, collective_timeout)
    try:
        store.set(f"record/{launch.rank}", json.dumps(record))
        if launch.rank == 0:
            waited = COLLECT_SHARE * budget - (time.monotonic() - started)
            records = _collect(store, launch.world_size, time.monotonic() + waited)
            outcome = ranks.summarize(records, launch.world_size, backend, COLLECT_SHARE * budget, ctx.require_gpu)
            _mark_fault(outcome, ctx.fault)
            store.set("verdict", json.dumps(ranks.verdict(outcome)))
            # In bare mode this process serves the store: stay until the others have read the verdict.
            others = len(records) - (1 if 0 in records else 0)
            deadline = started + VERDICT_SHARE * budget
            while store.add("read", 0) < others and time.monotonic() < deadline:
                time.sleep(POLL_S)
            return outcome
        told = _await_key(store, "verdict", started + VERDICT_SHARE * budget)
        if told is not None:
            store.add("read", 1)
        return ranks.follower_outcome(record, json.loads(told) if told else None, VERDICT_SHARE * budget)
    except Exception as err:  # the store went away: rank 0 (which serves it without torchrun) is gone
        return Outcome(Status.FAIL, f"rank {launch.rank} lost the job's store: {_first_line(err)}"
                       + (f"; this rank failed at {record['error']}" if record.get("error") else ""),
                       {"rank": record}, "store lost")
