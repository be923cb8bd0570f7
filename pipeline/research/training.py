"""Pieces shared by the training recipes (reference model training, adversarial fine-tuning)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_shift_flip(pixels: torch.Tensor, generator: torch.Generator, *, pad: int = 2) -> torch.Tensor:
    """``[B, C, H, W]`` float pixels: each image shifted by up to ``pad`` px in each direction (zero fill, like the
    black background of Fashion-MNIST) and mirrored left-right with probability 1/2. Draws, in order, the row
    shifts, the column shifts and the flips from ``generator``."""
    batch, channels, height, width = pixels.shape
    padded = F.pad(pixels, (pad, pad, pad, pad))
    dy = torch.randint(2 * pad + 1, (batch,), generator=generator)
    dx = torch.randint(2 * pad + 1, (batch,), generator=generator)
    rows = (dy.view(-1, 1) + torch.arange(height).view(1, -1)).view(batch, 1, height, 1)
    cols = (dx.view(-1, 1) + torch.arange(width).view(1, -1)).view(batch, 1, 1, width)
    shifted = padded[torch.arange(batch).view(-1, 1, 1, 1), torch.arange(channels).view(1, -1, 1, 1), rows, cols]
    flip = torch.rand(batch, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), shifted.flip(-1), shifted)


def cosine_lr_factor(step: int, *, warmup: int, total: int) -> float:
    """Learning-rate multiplier at 0-based ``step``: linear warm-up over ``warmup`` steps, then cosine decay to 0 at
    ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
