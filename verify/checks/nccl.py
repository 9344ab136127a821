"""nccl: a real process group, one process per GPU, doing an all-reduce whose answer is known exactly.

Without a GPU the very same code runs with the gloo backend over two CPU processes, so the process
group logic is exercised everywhere; the report then says that NCCL itself was not.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import timedelta
from typing import Any, Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from verify import perfmath, versions
from verify.checks._common import gpu_missing_reason, nccl_version
from verify.context import CheckContext
from verify.result import Findings, Outcome

ELEMENTS = 4096
BANDWIDTH_BYTES = 256 << 20  # nccl-tests' upper sizes: large enough to reach the bus bandwidth
CPU_BANDWIDTH_BYTES = 1 << 20
BANDWIDTH_WARMUP = 5
BANDWIDTH_ITERATIONS = 20
CPU_RANKS = 2
GROUP_TIMEOUT = timedelta(seconds=90)


def _measure_bus_bandwidth(device: torch.device, world: int, size: int) -> Dict[str, float]:
    """nccl-tests style: time all-reduces of `size` bytes after a warm-up; every rank must call this."""
    buffer = torch.ones(size // 4, dtype=torch.float32, device=device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(BANDWIDTH_WARMUP):
        dist.all_reduce(buffer)
    synchronize()
    started = time.perf_counter()
    for _ in range(BANDWIDTH_ITERATIONS):
        dist.all_reduce(buffer)
    synchronize()
    seconds = (time.perf_counter() - started) / BANDWIDTH_ITERATIONS
    algbw = size / seconds / 1e9
    return {"algbw_gbps": round(algbw, 2), "busbw_gbps": round(perfmath.bus_bandwidth(algbw, world), 2),
            "bandwidth_bytes": size}


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
    if world > 1:  # gloo too, with a small buffer: the same collective code path, not a benchmark
        size = BANDWIDTH_BYTES if backend == "nccl" else CPU_BANDWIDTH_BYTES
        bandwidth = _measure_bus_bandwidth(device, world, size)
        if rank == 0:
            record.update(bandwidth)
    dist.barrier()
    # No destroy_process_group(): it has no timeout, and gloo's (torch 2.4) hung on a busy machine,
    # holding run_group's join until the check's timeout. The rank process exits right after this
    # and the OS closes its sockets.
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle)


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

    missing = gpu_missing_reason()
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
    bandwidth = records[0].get("busbw_gbps") if records else None
    if bandwidth is not None:
        found.figures.update({k: records[0][k] for k in ("algbw_gbps", "busbw_gbps", "bandwidth_bytes")})
        if backend == "nccl":
            found.key_figure = f"busbw {bandwidth:g} GB/s"

    if missing:
        if found.failed:
            return found.outcome("")
        return ctx.no_gpu(f"{missing}: NCCL not exercised; the same process-group code gave an exact gloo "
                          f"all-reduce ({expected:g}) over {world} CPU processes", found.figures, found.key_figure)
    detail = f"; bus bandwidth {bandwidth:g} GB/s" if bandwidth is not None else " (1 GPU: no bandwidth to measure)"
    return found.outcome(f"NCCL {version}: exact all-reduce over {world} GPU(s){detail}")
