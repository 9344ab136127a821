"""train: a small CNN must really learn a synthetic 10-class task within a fixed step budget.

The data is generated, never downloaded: class c is a colour-tinted stripe pattern whose angle and
frequency depend on c, under heavy noise, and every step draws fresh images (so nothing can be
memorised). A pipeline that computes wrong gradients, drops updates or mangles mixed precision
fails to learn it; a healthy one gets well above chance in seconds.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from verify import compat
from verify.checks._common import gpu_unusable_reason, on_the_cpu_because
from verify.context import CheckContext
from verify.result import Findings, Outcome

FAULTS = ("random-labels",)

CLASSES = 10
SIZE = 32
NOISE = 2.0  # per pixel, vs a pattern of amplitude <= 1: hard enough to need learning
LOSS_RATIO = 0.5  # the final loss must fall below half the initial one (ln 10 = 2.30 at start)
MIN_ACCURACY = 0.5  # chance is 0.1


@dataclass(frozen=True)
class Budget:
    steps: int
    batch: int
    lr: float


BUDGET = {"cpu": Budget(steps=40, batch=32, lr=3e-3), "cuda": Budget(steps=200, batch=256, lr=3e-3)}


def make_templates(seed: int = 0) -> torch.Tensor:
    """(10, 3, 32, 32) class patterns: stripes (class-dependent angle and frequency) times a colour."""
    generator = torch.Generator().manual_seed(seed)
    axis = torch.arange(SIZE, dtype=torch.float32) / SIZE
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    templates = torch.empty(CLASSES, 3, SIZE, SIZE)
    for c in range(CLASSES):
        angle = math.pi * c / CLASSES
        frequency = 2.0 + (c % 3)
        wave = torch.sin(2 * math.pi * frequency * (xx * math.cos(angle) + yy * math.sin(angle)))
        colour = torch.rand(3, generator=generator) * 2 - 1
        templates[c] = colour.view(3, 1, 1) * wave
    return templates


def make_batch(templates: torch.Tensor, size: int, generator: torch.Generator,
               random_labels: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fresh images on the templates' device (no host-to-device copy to slow the GPU run)."""
    device = templates.device
    classes = torch.randint(0, CLASSES, (size,), generator=generator, device=device)
    images = templates[classes] + NOISE * torch.randn(size, 3, SIZE, SIZE, generator=generator, device=device)
    labels = torch.randint(0, CLASSES, (size,), generator=generator, device=device) if random_labels else classes
    return images, labels


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, CLASSES),
    )


def _grad_scaler() -> Any:
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


def train(device: str, random_labels: bool = False) -> Dict[str, Any]:
    """Train on fresh synthetic batches; return the losses, held-out accuracy and throughput."""
    budget = BUDGET[device]
    torch.manual_seed(0)
    generator = torch.Generator(device=device).manual_seed(1)
    templates = make_templates().to(device)
    model = make_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=budget.lr)
    amp_dtype: Optional[torch.dtype] = None
    scaler = None
    if device == "cuda":
        # Native bf16 only (compute capability 8.0+): torch >= 2.3 calls bf16 "supported" on V100/T4
        # by emulating it, which would skip the fp16 + GradScaler path those GPUs really train with.
        dtype_name, needs_scaler = compat.mixed_precision(torch.cuda.get_device_capability())
        amp_dtype = getattr(torch, dtype_name)
        scaler = _grad_scaler() if needs_scaler else None
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype else nullcontext

    losses = []
    timed_from, timed_images = None, 0
    for step in range(budget.steps):
        images, labels = make_batch(templates, budget.batch, generator, random_labels)
        if step == 3:  # leave out start-up (allocations, cuDNN autotuning) from the throughput
            if device == "cuda":
                torch.cuda.synchronize()
            timed_from = time.perf_counter()
        if timed_from is not None:
            timed_images += budget.batch
        with autocast():
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        losses.append(loss.detach())
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - timed_from if timed_from else float("nan")
    values = [float(loss) for loss in losses]

    model.eval()
    with torch.no_grad(), autocast():
        images, labels = make_batch(templates, 1000, torch.Generator(device=device).manual_seed(2), random_labels)
        predictions = model(images).argmax(dim=1)
    return {
        "device": device, "steps": budget.steps, "batch": budget.batch,
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
        "grad_scaler": scaler is not None,
        "cpu_threads": torch.get_num_threads(),
        "initial_loss": round(sum(values[:3]) / 3, 4), "final_loss": round(sum(values[-5:]) / 5, 4),
        "accuracy": round(float((predictions == labels).float().mean()), 4),
        "images_per_s": round(timed_images / elapsed, 1) if math.isfinite(elapsed) and elapsed > 0 else None,
    }


def run(ctx: CheckContext) -> Outcome:
    found = Findings()
    missing = gpu_unusable_reason()
    device = "cpu" if missing else "cuda"
    figures = train(device, random_labels=ctx.fault == "random-labels")
    found.figures.update(figures)
    if missing:
        found.figures["note"] = f"trained on the CPU: {missing}"
    found.key_figure = f"{figures['images_per_s']:g} img/s" if figures["images_per_s"] else ""
    initial, final, accuracy = figures["initial_loss"], figures["final_loss"], figures["accuracy"]
    if not (math.isfinite(final) and final < LOSS_RATIO * initial):
        found.fail(f"loss did not fall: {initial:.3f} -> {final:.3f} in {figures['steps']} steps "
                   f"(needs < {LOSS_RATIO:g}x): the model is not learning")
    if not accuracy >= MIN_ACCURACY:
        found.fail(f"held-out accuracy {accuracy:.0%} after {figures['steps']} steps (chance 10%, needs "
                   f">= {MIN_ACCURACY:.0%})")
    return found.outcome(f"loss {initial:.2f} -> {final:.2f}, accuracy {accuracy:.0%} on {device} "
                         f"({figures['precision']}) in {figures['steps']} steps"
                         + on_the_cpu_because(missing))
