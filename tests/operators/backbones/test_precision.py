"""``model.dtype: auto``: bf16 only on CPUs with native bf16, fp32 elsewhere; the choice is logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from cola_moderation.operators.backbones.base import resolve_dtype
from cola_moderation.operators.backbones.precision import auto_dtype, cpu_has_native_bf16, dtype_name
from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.config import ModelConfig

CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}\n\n"


@pytest.mark.parametrize(("extra", "native"), [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512vl", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, extra: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    assert cpu_has_native_bf16(cpuinfo) is native


def test_unreadable_cpuinfo_means_no_native_bf16(tmp_path: Path) -> None:
    assert cpu_has_native_bf16(tmp_path / "absent") is False


def test_auto_picks_bf16_only_on_a_native_bf16_cpu(caplog: pytest.LogCaptureFixture) -> None:
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="cola_moderation.operators.backbones.precision"):
        assert auto_dtype(cpu, native_bf16=True) == "bf16"
        assert auto_dtype(cpu, native_bf16=False) == "fp32"
        assert auto_dtype(torch.device("cuda"), native_bf16=True) == "fp32"  # not measured on GPUs
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "model.dtype=auto resolved to bf16 on cpu", "model.dtype=auto resolved to fp32 on cpu",
        "model.dtype=auto resolved to fp32 on cuda"]


def test_auto_resolves_like_this_machine(tiny_model_dir: Path) -> None:
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    backbone = load_backbone(ModelConfig(path=str(tiny_model_dir), device="cpu", dtype="auto"))
    assert backbone.dtype == expected
    assert next(backbone.image_tower.parameters()).dtype == expected
    assert dtype_name(backbone.dtype) == ("bf16" if expected == torch.bfloat16 else "fp32")
