"""The GPU check script is run rarely (only when a session is lent a GPU), so the suite keeps it working: the same
checks on the CPU (CPU against CPU), with tiny timing budgets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_cpu_and_passes_its_parity_checks() -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                             "--batch", "32", "--seconds", "0.1", "--skip-vit"],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for method in ("clip", "cola", "cascade", "gradient"):
        assert f"parity {method}" in out and "FAIL" not in out, out
    assert "dtype fp32: attacked flagged" in out
    assert "dtype fp16: not run (DeviceError: model.dtype=fp16 is not supported on CPU" in out  # refused, not run
    assert "throughput reference cascade" in out
    assert out.rstrip().endswith("gpu_check: all parity checks passed")


def test_gpu_check_covers_every_backbone_family() -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                             "--batch", "4", "--seconds", "0.05", "--families-only", "--tiny"],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for family in ("clip", "open_clip", "siglip"):
        assert f"family {family:9s} parity PASS" in out, out
        assert f"throughput {family:9s} tiny encoder fp32" in out and f"family {family:9s} bf16: min cosine" in out
        assert f"ratio {family:9s} encoder bf16 / fp32: " in out
    assert "ratio clip      plain path / encoder alone fp32: " in out and "encoder alone bf16: " in out
    assert out.rstrip().endswith("gpu_check: all parity checks passed")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_gpu_check_without_cuda_says_so() -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2 and "CUDA is not available here" in result.stderr
