"""Test images for the matching acceptance checks: Fashion-MNIST test images as 8-bit PNG uploads, their JPEG
re-encodes and their L-inf PGD copies crafted against plain CLIP (the bundled reference model), plus images that are
not banked. Built once per test session."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from cola_moderation.resources import config_path

REPO = Path(__file__).resolve().parents[3]
BANKED = range(0, 50)
OTHERS = range(1000, 2000)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(array: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def pgd_copies(images: np.ndarray, labels: np.ndarray, *, eps: float, steps: int = 10) -> np.ndarray:
    """``[n, 28, 28]`` uint8 -> their PGD copies (10 steps, cross-entropy of plain zero-shot CLIP on the reference
    model, the true labels), rounded to 8 bits and back to one grey channel."""
    from cola_moderation.operators.backbones.registry import load_backbone
    from cola_moderation.operators.defences.text_bank import TextBank
    from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier
    from cola_moderation.pipeline.research.attacks import clip_cross_entropy, pgd_linf, round_to_8bit
    from cola_moderation.pipeline.runtime.config import load_config

    config = load_config("reference", calibrate=False)
    backbone = load_backbone(config.model.model_copy(update={"device": "cpu"}))
    classifier = ZeroShotClassifier(TextBank.build(backbone, config.taxonomy), logit_scale=backbone.logit_scale)
    pixels = torch.from_numpy(images).unsqueeze(1).expand(-1, 3, -1, -1).float().div(255.0)
    attacked = pgd_linf(clip_cross_entropy(backbone, classifier), pixels, torch.from_numpy(labels), eps=eps,
                        steps=steps, generator=torch.Generator().manual_seed(0))
    grey = round_to_8bit(attacked).mean(dim=1).mul(255.0).round().clamp(0, 255)
    return grey.to(torch.uint8).numpy()


@dataclass(frozen=True)
class KnownImages:
    """PNG uploads: ``banked`` (to hash into a bank), ``jpeg75`` / ``pgd8`` (their re-encodes and 8/255 PGD copies)
    and ``others`` (1,000 test images not in the bank)."""

    banked: list[bytes]
    jpeg75: list[bytes]
    pgd8: list[bytes]
    others: list[bytes]


@cache
def known_images() -> KnownImages:
    from cola_moderation.pipeline.research.fashion_mnist import load_fashion_mnist

    test = load_fashion_mnist("test")
    images = test.images.numpy()
    banked = images[BANKED.start : BANKED.stop]
    attacked = pgd_copies(banked, test.labels.numpy()[BANKED.start : BANKED.stop], eps=8 / 255)
    return KnownImages(banked=[png(a) for a in banked], jpeg75=[jpeg(a, 75) for a in banked],
                       pgd8=[png(a) for a in attacked], others=[png(a) for a in images[OTHERS.start : OTHERS.stop]])


def write_bank_with_cola_hash(images: list[bytes], folder: Path, *, label: str = "known") -> Path:
    """Save ``images`` as PNG files and build a CSV bank from them with ``cola hash --bank-rows`` (a real
    subprocess, as a user would)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(images):
        path = folder / f"banked-{i:03d}.png"
        path.write_bytes(data)
        paths.append(str(path))
    result = subprocess.run([sys.executable, "-m", "cola_moderation.pipeline.cli", "hash", "--bank-rows",
                             "--label", label, *paths], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    bank = folder / "bank.csv"
    bank.write_text(result.stdout)
    return bank


def reference_config(bank: Path | str, *, skip_model_on_match: bool = False, action: str = "block",
                     **overrides: Any) -> dict[str, Any]:
    """The bundled reference config (plain CLIP for speed) with one bank named ``known``."""
    data = yaml.safe_load(config_path("reference").read_text())
    data.update({"method": "clip", "matching": {"banks": {"known": {"path": str(bank), "action": action}},
                                                "skip_model_on_match": skip_model_on_match}})
    data["model"] = {**data["model"], "device": "cpu"}
    data.update(overrides)
    return data
