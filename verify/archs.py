"""Whether a build's GPU code covers a device: decided before any kernel is launched.

A build lists cubins (`sm_XY`: machine code) and PTX (`compute_XY`: code the driver compiles on
first use). CUDA's rules:
- a cubin for sm_XY runs on devices of the same major with minor >= Y (sm_80 runs on an 8.6 part);
  an arch-specific cubin (sm_90a) runs only on exactly that device;
- PTX for compute_XY is JIT-compiled for any device of capability >= X.Y (unless arch-specific).
When nothing applies, the first kernel fails with "no kernel image is available for execution".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

_ARCH = re.compile(r"^(sm|compute)_(\d+)([af]?)$")


@dataclass(frozen=True)
class ArchEntry:
    kind: str  # "sm" (cubin) or "compute" (PTX)
    capability: int  # 86 for 8.6, 100 for 10.0
    variant: str  # "", "a" (arch-specific) or "f" (family-specific)
    text: str

    @property
    def major(self) -> int:
        return self.capability // 10


@dataclass(frozen=True)
class Coverage:
    ok: bool
    how: str  # "native", "compatible" (same-major cubin), "ptx" (JIT) or "none"
    entry: Optional[str] = None

    def describe(self, device_sm: str) -> str:
        if self.how == "native":
            return f"{device_sm} cubin"
        if self.how == "compatible":
            return f"{self.entry} cubin runs on {device_sm}"
        if self.how == "ptx":
            return f"{self.entry} PTX, JIT-compiled for {device_sm} on first use"
        return f"no cubin or PTX for {device_sm}"


def parse_arch(text: str) -> ArchEntry:
    match = _ARCH.match(text.strip())
    if not match:
        raise ValueError(f"not a CUDA arch entry (sm_XY or compute_XY): {text!r}")
    kind, number, variant = match.groups()
    return ArchEntry(kind, int(number), variant, text.strip())


def sm_name(major: int, minor: int) -> str:
    return f"sm_{major}{minor}"


def coverage(major: int, minor: int, arch_list: Iterable[str]) -> Coverage:
    """How (and whether) the entries in `arch_list` give a device of capability major.minor code."""
    device = major * 10 + minor
    entries = [parse_arch(text) for text in arch_list]
    native = [e for e in entries if e.kind == "sm" and e.capability == device]
    if native:
        return Coverage(True, "native", native[0].text)
    compatible = [
        e for e in entries
        if e.kind == "sm" and e.variant != "a" and e.major == major and e.capability < device
    ]
    if compatible:
        best = max(compatible, key=lambda e: e.capability)
        return Coverage(True, "compatible", best.text)
    ptx = [
        e for e in entries
        if e.kind == "compute" and (e.capability == device if e.variant == "a" else e.capability <= device)
    ]
    if ptx:
        best = max(ptx, key=lambda e: e.capability)
        return Coverage(True, "ptx", best.text)
    return Coverage(False, "none")
