"""Throughput arithmetic and the published peaks a measurement is compared with. No torch here.

Peaks are dense (no 2:4 sparsity) tensor-core TFLOP/s and memory bandwidth in GB/s (1e9 bytes/s),
each with the NVIDIA document it comes from. Where NVIDIA prints only a "with sparsity" figure, the
value is that figure halved (marked "sparse/2"). GeForce bf16/fp16 figures are the rate with fp32
accumulate, which is what autocast and cuBLAS use. None means "not stated": the check then reports
the measurement without a percentage. There is deliberately no entry (so no percentage) for:
- MIG slices ("... MIG 1g.5gb"): a slice has a fraction of the SMs and memory, and NVIDIA publishes no
  per-slice peak;
- parts NVIDIA publishes no figures for: the RTX 4090 Laptop GPU (its clocks depend on the laptop's
  power limit), the A10G (an AWS part), the plain "NVIDIA H100" SKU.
A T4 is rated 65 TFLOP/s fp16 at boost but its 70 W limit holds it far below that under sustained
load, so its percentages are shown without a "slow" warning.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

_A100 = "NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf)"
_H100 = "NVIDIA H100 datasheet, nvidia.com/en-us/data-center/h100 (sparse/2)"
_H200 = "NVIDIA H200 datasheet, nvidia.com/en-us/data-center/h200 (sparse/2)"
_V100 = "NVIDIA V100 datasheet (volta-v100-datasheet-update-us-1165301-r5.pdf)"


@dataclass(frozen=True)
class Peak:
    label: str
    tf32_tflops: Optional[float]
    bf16_tflops: Optional[float]
    fp16_tflops: Optional[float]
    memory_gbps: Optional[float]
    source: str
    warn_when_slow: bool = True  # False for parts whose power limit keeps them far below the rated peak


# (pattern on torch.cuda.get_device_name(), peak); first match wins, so specific names come first.
PEAKS: Sequence[Tuple[str, Peak]] = (
    # GB200's Blackwell GPUs are faster than HGX B200's (power and clocks): their own row, matched first.
    (r"GB200", Peak("GB200", 1250.0, 2500.0, 2500.0, 8000.0,
                    "NVIDIA GB200 NVL72 datasheet, per-superchip column (2 GPUs: TF32 5, FP16/BF16 10 PFLOPS sparse, "
                    "16 TB/s), halved per GPU and sparse/2")),
    (r"(?<!G)B200", Peak("B200", 1100.0, 2250.0, 2250.0, 7700.0,
                   "NVIDIA HGX B200 per-GPU table, nvidia.com/en-us/data-center/hgx (sparse/2; 7.7 TB/s)")),
    (r"GH200 144G", Peak("GH200 144GB HBM3e", 494.0, 990.0, 990.0, 4900.0,
                         "NVIDIA GH200 Grace Hopper Superchip datasheet (dense figures, HBM3e column)")),
    (r"GH200", Peak("GH200 96GB HBM3", 494.0, 990.0, 990.0, 4000.0,
                    "NVIDIA GH200 Grace Hopper Superchip datasheet (dense figures, HBM3 column)")),
    (r"H200 NVL", Peak("H200 NVL", 417.5, 835.5, 835.5, 4800.0, _H200)),
    (r"\bH200\b", Peak("H200 SXM", 494.5, 989.5, 989.5, 4800.0, _H200)),
    (r"H100 NVL", Peak("H100 NVL", 417.5, 835.5, 835.5, 3900.0, _H100)),
    (r"H100 PCIe", Peak("H100 PCIe", 378.0, 756.5, 756.5, 2000.0, _H100)),
    (r"H100 80GB HBM3", Peak("H100 SXM", 494.7, 989.4, 989.4, 3350.0,
                             "NVIDIA H100 Tensor Core GPU Architecture whitepaper (dense); datasheet 3.35 TB/s")),
    (r"A100-SXM4-80GB", Peak("A100 SXM 80GB", 156.0, 312.0, 312.0, 2039.0, _A100)),
    (r"A100 80GB PCIe", Peak("A100 PCIe 80GB", 156.0, 312.0, 312.0, 1935.0, _A100)),
    (r"A100-(SXM4|PCIE)-40GB", Peak("A100 40GB", 156.0, 312.0, 312.0, 1555.0, _A100)),
    (r"L40S", Peak("L40S", 183.0, 362.05, 362.05, 864.0, "NVIDIA L40S datasheet (dense figures)")),
    (r"\bL4\b", Peak("L4", 60.0, 121.0, 121.0, 300.0, "NVIDIA L4 product page, nvidia.com/en-us/data-center/l4 "
                                                       "(sparse/2)")),
    (r"\bA10\b", Peak("A10", 62.5, 125.0, 125.0, 600.0, "NVIDIA A10 datasheet (dense figures)")),
    (r"RTX 5090", Peak("RTX 5090", 104.8, 209.5, 209.5, 1792.0,
                       "NVIDIA RTX Blackwell GPU architecture whitepaper, appendix (fp32 accumulate)")),
    (r"RTX 4090(?! Laptop)", Peak("RTX 4090", 82.6, 165.2, 165.2, 1008.0,
                                  "NVIDIA Ada GPU architecture whitepaper, appendix (fp32 accumulate)")),
    (r"RTX 3090(?! Ti)", Peak("RTX 3090", 35.6, 71.0, 71.0, 936.0,
                              "NVIDIA Ampere GA102 GPU architecture whitepaper, appendix A (fp32 accumulate)")),
    (r"V100S", Peak("V100S PCIe", None, None, 130.0, 1134.0, _V100)),
    (r"V100-PCIE|PG500-216", Peak("V100 PCIe", None, None, 112.0, 900.0, _V100)),
    (r"V100-SXM2", Peak("V100 SXM2", None, None, 125.0, 900.0, _V100)),
    (r"\bT4\b", Peak("T4", None, None, 65.0, 320.0, "NVIDIA T4 product page and datasheet "
                                                     "(t4-tensor-core-datasheet-951643.pdf)", warn_when_slow=False)),
)

SLOW_FRACTION = 0.5  # below this share of the published peak: warn
# Above this share of the published peak the measurement is wrong, not the GPU (a missing synchronize,
# a clock error): boost clocks give a few percent over a datasheet's figure, never 50 %.
IMPOSSIBLE_FRACTION = 1.05


def lookup_peak(device_name: str) -> Optional[Peak]:
    """The published peak of this GPU, or None (a MIG slice, or a part without published figures)."""
    if re.search(r"\bMIG\b", device_name):
        return None
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
