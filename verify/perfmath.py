"""Throughput arithmetic and the published peaks a measurement is compared with. No torch here.

Peaks are dense (no 2:4 sparsity) tensor-core TFLOP/s and memory bandwidth in GB/s (1e9 bytes/s),
filled only where a source we could consult states them; None means "not stated": the check then
reports the measurement without a percentage. Sources (as stored copies consulted when writing):
- A100: TF32 156, FP16/BF16 312; 1555 GB/s (40GB), 2039 GB/s (80GB SXM):
  github.com/fanghostt/transformers-benchmarks (README), gist.github.com/mikasenghaas/d63ded03f1f0417b1677627119bacc0d,
  huggingface.co/RajBhope/gpu-runtime-predictor gpu_catalog.json
- H100 SXM: BF16/FP16 989, 3350 GB/s; H200: BF16/FP16 989, 4800 GB/s:
  gist mikasenghaas (above), huggingface.co/datasets/devidasmishra/ai-inference-hardware-economics-2026
- H100 PCIe: FP16 ~750 (datasheet 1513 with sparsity, i.e. 756 dense), 2000 GB/s: gist.github.com/kimbochen
- RTX 4090: BF16 165, 1008 GB/s: gist mikasenghaas
- V100: FP16 125, 900 GB/s; T4: FP16 65, 320 GB/s: gpu_catalog.json (above)
- A10: FP16 125, 600 GB/s: gist.github.com/kimbochen
- L4: 300 GB/s; L40S: 864 GB/s (memory only: their dense tensor figures were not stated in those sources)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple


@dataclass(frozen=True)
class Peak:
    label: str
    tf32_tflops: Optional[float]
    bf16_tflops: Optional[float]
    fp16_tflops: Optional[float]
    memory_gbps: Optional[float]


# (pattern on torch.cuda.get_device_name(), peak); first match wins, so specific names come first.
PEAKS: Sequence[Tuple[str, Peak]] = (
    (r"H100 PCIe", Peak("H100 PCIe", None, None, 756.0, 2000.0)),
    (r"H100 80GB HBM3", Peak("H100 SXM", None, 989.0, 989.0, 3350.0)),
    (r"H200(?! NVL)", Peak("H200 SXM", None, 989.0, 989.0, 4800.0)),
    (r"A100-SXM4-80GB", Peak("A100 SXM 80GB", 156.0, 312.0, 312.0, 2039.0)),
    (r"A100 80GB PCIe", Peak("A100 80GB PCIe", 156.0, 312.0, 312.0, None)),
    (r"A100", Peak("A100 40GB", 156.0, 312.0, 312.0, 1555.0)),
    (r"L40S", Peak("L40S", None, None, None, 864.0)),
    (r"\bL4\b", Peak("L4", None, None, None, 300.0)),
    (r"\bA10\b", Peak("A10", None, None, 125.0, 600.0)),
    (r"\bT4\b", Peak("T4", None, None, 65.0, 320.0)),
    (r"RTX 4090", Peak("RTX 4090", None, 165.0, None, 1008.0)),
    (r"V100", Peak("V100", None, None, 125.0, 900.0)),
)

SLOW_FRACTION = 0.5  # below this share of the published peak: warn


def lookup_peak(device_name: str) -> Optional[Peak]:
    for pattern, peak in PEAKS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return peak
    return None


def percent_of(measured: float, peak: Optional[float]) -> Optional[float]:
    if not peak:
        return None
    return round(100.0 * measured / peak, 1)


def matmul_tflops(n: int, seconds_per_matmul: float) -> float:
    """An n x n x n matmul does 2*n^3 floating-point operations (a multiply and an add each)."""
    return 2.0 * n ** 3 / seconds_per_matmul / 1e12


def bus_bandwidth(algorithm_bandwidth: float, ranks: int) -> float:
    """nccl-tests' all-reduce bus bandwidth: algbw * 2*(n-1)/n, comparable across rank counts."""
    if ranks < 1:
        raise ValueError("ranks must be >= 1")
    return algorithm_bandwidth * 2.0 * (ranks - 1) / ranks
