"""``model.dtype: auto``: which precision a backbone runs inference in, resolved once per process and logged.

``auto`` picks bf16 only where it was measured to pay (docs/benchmarks.md, ``benchmarks/zero_shot_throughput.py``):
a CPU with native bf16 instructions (AVX-512 BF16 or AMX, read from ``/proc/cpuinfo``), where a ViT-B/32 image
encoder runs ~2-2.7x faster with bf16 weights at 99.8% top-1 agreement with fp32. Everything else (CPUs without
them, where bf16 is emulated and slower; CUDA, not measured yet) stays fp32. Training (``cola finetune``) always
loads fp32 weights; see docs/benchmarks.md for what bf16 costs (the detector's calibrated false-positive rate moves).
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: dot products in bf16 without emulation."""


@cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU advertises native bf16 instructions; ``False`` where ``/proc/cpuinfo`` is unreadable (macOS,
    Windows: ``auto`` then means fp32)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(NATIVE_BF16_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


def auto_dtype(device: torch.device, *, native_bf16: bool | None = None) -> str:
    """``model.dtype: auto`` on ``device``: ``bf16`` on a CPU with native bf16 (``native_bf16``: override the
    ``/proc/cpuinfo`` check), else ``fp32``. Logged once per call at INFO."""
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    name = "bf16" if device.type == "cpu" and native else "fp32"
    reason = ("the CPU has native bf16 (avx512_bf16/amx_bf16)" if name == "bf16" else
              "the CPU has no native bf16" if device.type == "cpu" else f"bf16 is not measured on {device.type}")
    log.info("model.dtype=auto resolved to %s on %s: %s", name, device, reason)
    return name


def dtype_name(dtype: torch.dtype) -> str:
    """The config name (``fp32|fp16|bf16``) of a resolved dtype, for reports and calibration files."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
