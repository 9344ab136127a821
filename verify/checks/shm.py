"""shm: /dev/shm's size, and a DataLoader with worker processes actually moving tensors through it.

DataLoader workers hand batches to the main process through shared memory. Docker gives a
container 64 MB of /dev/shm by default, and a worker then dies with "bus error" mid-epoch.
"""
from __future__ import annotations

import os
import signal
from typing import List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from verify.context import CheckContext
from verify.result import Findings, Outcome, Status

FAULTS = ("bus-error",)

SHM_PATH = "/dev/shm"
SHM_MIN_BYTES = 1 << 30
FIX = ("give the container more shared memory: `docker run --shm-size=8g` "
       "(compose: `shm_size: 8gb`, or `ipc: host`)")
_SHM_SYMPTOMS = ("bus error", "shared memory", "shm", "no space left on device", "sigbus", "killed by signal",
                 "exited unexpectedly")

SAMPLES = 16
SAMPLE_ELEMENTS = 1 << 18  # 1 MiB of float32 per sample, 4 MiB per batch: goes through /dev/shm
BATCH = 4
WORKERS = 2


def shm_size(path: str = SHM_PATH) -> Optional[int]:
    """Total bytes of the filesystem at `path`, or None when it does not exist."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_frsize * stats.f_blocks


def _human(size: int) -> str:
    if size >= 1 << 30:
        return f"{size / (1 << 30):.1f} GiB"
    return f"{size / (1 << 20):.0f} MiB"


def assess_shm(size: Optional[int], minimum: int = SHM_MIN_BYTES) -> Tuple[Status, str]:
    """The verdict on a /dev/shm of `size` bytes: warn below `minimum`, with the fix."""
    if size is None:
        return Status.WARN, f"{SHM_PATH} does not exist: DataLoader workers cannot share tensors; {FIX}"
    if size < minimum:
        return (Status.WARN, f"{SHM_PATH} is {_human(size)} (< {_human(minimum)}): DataLoader workers can die "
                             f"with 'bus error' on real batches; {FIX}")
    return Status.PASS, f"{SHM_PATH} is {_human(size)}"


def _error_chain(error: BaseException) -> List[BaseException]:
    """`error` and the errors it was raised from or while handling, outermost first."""
    chain: List[BaseException] = []
    current: Optional[BaseException] = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def explain_loader_failure(error: BaseException) -> str:
    """What to tell the user when the DataLoader broke; shared-memory symptoms get the fix.

    The whole chain is read, not only the error that surfaced: DataLoader reports a dead worker
    from its SIGCHLD handler, and when that signal lands inside torch's operator lookup (the
    profiler hook around every batch), torch turns the RuntimeError into an unrelated
    AttributeError `from None`, which hides the worker's death everywhere but __context__.
    """
    for link in _error_chain(error):
        text = str(link).strip()
        if any(symptom in text.lower() for symptom in _SHM_SYMPTOMS):
            return (f"DataLoader with {WORKERS} workers failed, a worker died ({text.splitlines()[0]}): "
                    f"likely out of shared memory; {FIX}")
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return f"DataLoader with {WORKERS} workers failed: {type(error).__name__}: {first}"


class _Tensors(Dataset):  # type: ignore[type-arg]  # Dataset is generic only in torch >= 2.2
    """Sample i is a 1 MiB tensor filled with i: each batch's sum is known exactly."""

    def __init__(self, fault: Optional[str]) -> None:
        self.fault = fault

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.fault == "bus-error" and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGBUS)  # what a worker gets when /dev/shm is full
        return torch.full((SAMPLE_ELEMENTS,), float(index))


def iterate_loader(pin_memory: bool, fault: Optional[str] = None) -> int:
    """Iterate a DataLoader with worker processes; return the batches seen. Raises on wrong data."""
    # No `timeout`: with one, DataLoader blocks that long on its queue before it looks at its workers, so a
    # worker that died before its SIGCHLD could be told (killed at its first sample) took 60 s to be named.
    # Without, it looks every 5 s (MP_STATUS_CHECK_INTERVAL); a worker that hangs meets the check's own timeout.
    loader = DataLoader(_Tensors(fault), batch_size=BATCH, num_workers=WORKERS, pin_memory=pin_memory)
    batches = 0
    for number, batch in enumerate(loader):
        first = number * BATCH
        expected = SAMPLE_ELEMENTS * sum(range(first, first + BATCH))
        total = float(batch.double().sum())
        if total != expected or tuple(batch.shape) != (BATCH, SAMPLE_ELEMENTS):
            raise ValueError(f"batch {number} came back wrong: sum {total}, expected {expected}")
        if pin_memory and not batch.is_pinned():
            raise ValueError("pin_memory=True but the batch is not in pinned memory")
        batches += 1
    if batches != SAMPLES // BATCH:
        raise ValueError(f"{batches} batches came back, expected {SAMPLES // BATCH}")
    return batches


def run(ctx: CheckContext) -> Outcome:
    found = Findings()
    size = shm_size()
    status, message = assess_shm(size)
    pin = torch.cuda.is_available()
    found.figures.update({"shm_bytes": size, "shm_min_bytes": SHM_MIN_BYTES, "workers": WORKERS,
                          "pin_memory": pin, "batch_bytes": BATCH * SAMPLE_ELEMENTS * 4})
    found.key_figure = f"shm {_human(size)}" if size is not None else "no /dev/shm"
    if status is Status.WARN:
        found.warn(message)
    try:
        found.figures["batches"] = iterate_loader(pin, ctx.fault)
    except Exception as err:
        found.fail(explain_loader_failure(err))
    pinned = "pinned" if pin else "not pinned: no GPU"
    return found.outcome(f"{message}; DataLoader with {WORKERS} workers moved {SAMPLES} MiB exactly ({pinned})")
