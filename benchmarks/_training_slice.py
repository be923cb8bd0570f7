"""Shared by the scripts that tune on TRAINING images: the slice's pixels and labels, and gray-box PGD copies."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cola_moderation.operators.moderator import Moderator
from cola_moderation.pipeline.research.attacks import pgd_linf
from cola_moderation.pipeline.research.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from cola_moderation.pipeline.research.targets import attack_logits
from cola_moderation.pipeline.runtime.config import PipelineConfig


def training_slice(moderator: Moderator, config: PipelineConfig, offset: int,
                   images: int) -> tuple[slice, torch.Tensor, torch.Tensor]:
    """Fashion-MNIST TRAINING images ``[offset:offset+images]`` at the model's input size and their labels as
    indices into the config's taxonomy."""
    data = load_fashion_mnist("train")
    rows = slice(offset, offset + images)
    pixels = data.pixels(rows)
    size = moderator.backbone.geometry.size
    if pixels.shape[-1] != size:
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    order = torch.tensor([config.taxonomy.label_names.index(name.replace("-", "_")) for name in CLASS_NAMES])
    return rows, pixels, order[data.labels[rows]]


def graybox_pgd(moderator: Moderator, pixels: torch.Tensor, labels: torch.Tensor, *, eps: float, steps: int,
                batch: int | None = None) -> torch.Tensor:
    """L-inf PGD on plain zero-shot CLIP's cross-entropy (seed 0, in ``batch``-sized chunks), rounded to 8 bits."""
    def clip_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(attack_logits(moderator, x, method="clip"), y, reduction="none")

    generator = torch.Generator().manual_seed(0)
    size = batch or len(pixels)
    attacked = torch.cat([pgd_linf(clip_loss, pixels[i:i + size], labels[i:i + size], eps=eps, steps=steps,
                                   generator=generator) for i in range(0, len(pixels), size)])
    return (attacked * 255).round() / 255
