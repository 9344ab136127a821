"""nccl: a real process group, one process per GPU, doing an all-reduce whose answer is known exactly.

Without a GPU the very same code runs with the gloo backend over two CPU processes, so the process
group logic is exercised everywhere; the report then says that NCCL itself was not.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import timedelta
from typing import Any, Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from verify import perfmath, versions
from verify.checks._collective import allreduce_seconds
from verify.checks._common import gpu_unusable_reason, nccl_version
from verify.context import CheckContext
from verify.result import Findings, Outcome

ELEMENTS = 4096
BANDWIDTH_BYTES = 256 << 20  # nccl-tests' upper sizes: large enough to reach the bus bandwidth
CPU_BANDWIDTH_BYTES = 1 << 20
BANDWIDTH_WARMUP = 5
BANDWIDTH_ITERATIONS = 20
CPU_RANKS = 2
GROUP_TIMEOUT = timedelta(seconds=90)


def _rank_main(rank: int, world: int, backend: str, init_file: str, out_dir: str) -> None:
    """One rank: join the group, all-reduce rank+1, record what came back. Module level: spawn pickles it."""
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=GROUP_TIMEOUT)
    tensor = torch.full((ELEMENTS,), float(rank + 1), dtype=torch.float32, device=device)
    dist.all_reduce(tensor)
    expected = world * (world + 1) / 2  # small integers: exact in float32, any summation order
    record: Dict[str, Any] = {
        "rank": rank, "pid": os.getpid(), "value": float(tensor[0]), "expected": expected,
        "exact": bool((tensor == expected).all()),
    }
    barrier: Dict[str, Any] = {"device_ids": [rank]} if backend == "nccl" else {}
    if world > 1:  # gloo too, with a small buffer: the same collective code path, not a benchmark
        size = BANDWIDTH_BYTES if backend == "nccl" else CPU_BANDWIDTH_BYTES
        record["seconds"] = allreduce_seconds(device, size, BANDWIDTH_ITERATIONS, BANDWIDTH_WARMUP, barrier)
        record["bandwidth_bytes"] = size
    dist.barrier(**barrier)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    # No destroy_process_group() and no interpreter teardown: the former has no timeout (gloo's
    # hung on a busy machine), and the latter runs the group's destructor, whose ncclCommAbort can
    # block (torch >= 2.4 also warns). Either held run_group's join until the check's timeout
    # although the record was written. The OS closes the sockets.
    os._exit(0)


def run_group(backend: str, world: int) -> List[Dict[str, Any]]:
    """Start `world` ranks and return each rank's record. Raises if any rank fails."""
    workdir = tempfile.mkdtemp(prefix="verify-nccl-")
    try:
        # spawn for CUDA (a forked child cannot use CUDA once the parent touched it); fork for the
        # CPU ranks, which never touch CUDA and so skip a torch import each.
        start_method = "spawn" if backend == "nccl" else "fork"
        mp.start_processes(_rank_main, args=(world, backend, os.path.join(workdir, "rendezvous"), workdir),
                           nprocs=world, join=True, start_method=start_method)
        records = []
        for rank in range(world):
            with open(os.path.join(workdir, f"rank{rank}.json"), encoding="utf-8") as handle:
                records.append(json.load(handle))
        return records
    finally:
        shutil.rmtree(workdir, ignore_errors=True)



def run(ctx: CheckContext) -> Outcome:
    found = Findings()
    version = nccl_version()
    promised = ctx.manifest.nccl if ctx.manifest else None
    found.figures.update({"version": version, "manifest_nccl": promised})
    if torch.version.cuda and version is None:
        found.fail("torch is a CUDA build but reports no NCCL version (built without NCCL?)")
    if version and promised and not versions.same_release(promised, version):
        found.fail(f"NCCL {version} is in use but the manifest promises {promised}")

    missing = gpu_unusable_reason()
    backend, world = ("gloo", CPU_RANKS) if missing else ("nccl", torch.cuda.device_count())
    found.figures.update({"backend": backend, "world_size": world})
    found.key_figure = f"NCCL {version}" if version else f"{backend} x{world}"
    if not dist.is_available() or (backend == "nccl" and not dist.is_nccl_available()):
        found.fail(f"torch.distributed has no {backend} backend in this build")
        return found.outcome("")

    try:
        records = run_group(backend, world)
    except Exception as err:  # a rank raised or died: its traceback's last line says why
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        hint = (" (NCCL_DEBUG=INFO shows more; in Docker, NCCL also needs --ipc=host or a larger --shm-size)"
                if backend == "nccl" else "")
        found.fail(f"{backend} all-reduce over {world} process(es) failed: "
                   f"{lines[-1] if lines else type(err).__name__}{hint}")
        return found.outcome("")
    expected = world * (world + 1) / 2
    found.figures.update({"allreduce_expected": expected, "allreduce_values": [r["value"] for r in records],
                          "rank_pids": [r["pid"] for r in records]})
    wrong = [r for r in records if not r["exact"]]
    if wrong:
        found.fail(f"all-reduce returned {wrong[0]['value']} on rank {wrong[0]['rank']}, expected exactly {expected}")
    if len({r["pid"] for r in records} | {os.getpid()}) != world + 1:
        found.fail("the ranks did not run in separate processes")
    bandwidth = None
    if records and all("seconds" in r for r in records):
        slowest = max(r["seconds"] for r in records)  # a collective is as fast as its slowest rank
        algbw = records[0]["bandwidth_bytes"] / slowest / 1e9
        bandwidth = round(perfmath.bus_bandwidth(algbw, world), 2)
        found.figures.update({"rank_seconds": [r["seconds"] for r in records], "algbw_gbps": round(algbw, 2),
                              "busbw_gbps": bandwidth, "bandwidth_bytes": records[0]["bandwidth_bytes"]})
        if backend == "nccl":
            found.key_figure = f"busbw {bandwidth:g} GB/s"

    if missing:
        if found.failed:
            return found.outcome("")
        return ctx.no_gpu(f"{missing}: NCCL not exercised; the same process-group code gave an exact gloo "
                          f"all-reduce ({expected:g}) over {world} CPU processes", found.figures, found.key_figure)
    if world == 1 and not found.failed:
        # One rank talks to nobody (NCCL also refuses two ranks on one GPU): the communicator is built but
        # no P2P, shared-memory or network transport is opened, so a pass would claim what was never run.
        found.warn("1 GPU, so 1 rank: NCCL initialised and reduced, but no transport (P2P, shared memory, network) "
                   "was exercised; multi-GPU NCCL is unproven on this host")
    detail = f"; bus bandwidth {bandwidth:g} GB/s" if bandwidth is not None else " (1 GPU: no bandwidth to measure)"
    return found.outcome(f"NCCL {version}: exact all-reduce over {world} GPU(s){detail}")
