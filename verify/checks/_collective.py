"""The timed all-reduce both process-group checks use (nccl: one node; distributed: the whole job).

Every rank calls it; each returns its own seconds per all-reduce. The caller takes the slowest
rank's time, as nccl-tests does: a collective is as fast as its slowest member.
"""
from __future__ import annotations

import time
from typing import Any, Dict

import torch
import torch.distributed as dist


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allreduce_seconds(device: torch.device, size: int, iterations: int, warmup: int,
                      barrier: Dict[str, Any]) -> float:
    """Seconds per all-reduce of `size` bytes on this rank, after a warm-up and a barrier.

    The barrier keeps a rank that finished its warm-up early from timing its wait for the others.
    NCCL ops are queued asynchronously and waited for together, as nccl-tests does; gloo runs them
    one by one (its worker threads would otherwise reduce the same buffer concurrently).
    """
    buffer = torch.zeros(size // 4, dtype=torch.float32, device=device)
    for _ in range(warmup):
        dist.all_reduce(buffer)
    synchronize(device)
    dist.barrier(**barrier)
    started = time.perf_counter()
    if device.type == "cuda":
        works = [dist.all_reduce(buffer, async_op=True) for _ in range(iterations)]
        for work in works:
            work.wait()
    else:
        for _ in range(iterations):
            dist.all_reduce(buffer)
    synchronize(device)
    return (time.perf_counter() - started) / iterations
