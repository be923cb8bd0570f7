"""Seeded image views for COLA: the original plus random resized crops / flips, on pixel tensors.

Views are affine resamplings (``affine_grid`` + bilinear ``grid_sample``), so they are differentiable in the pixels
and an attack can take gradients through them (EOT). The crop parameters of view n are shared by every image of a
batch and drawn from a generator seeded by config, so an image gets the same views in any batch, on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cola_moderation.operators.config import ViewsConfig


@dataclass(frozen=True)
class ViewParams:
    """Per-view affine parameters, each ``[N]``: crop width/height as fractions of the image, crop centre in
    [-1, 1] coordinates, and the mirror sign (-1 = flipped). View 0 is always the identity."""

    width: torch.Tensor
    height: torch.Tensor
    center_x: torch.Tensor
    center_y: torch.Tensor
    mirror: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.width.shape[0])

    def theta(self, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``[N, 2, 3]`` affine matrices mapping output to input coordinates (``affine_grid`` convention)."""
        zero = torch.zeros_like(self.width)
        rows = torch.stack([
            torch.stack([self.width * self.mirror, zero, self.center_x], dim=-1),
            torch.stack([zero, self.height, self.center_y], dim=-1),
        ], dim=1)
        return rows.to(device=device, dtype=dtype)


def sample_view_params(config: ViewsConfig, *, generator: torch.Generator | None = None) -> ViewParams:
    """Draw ``config.count - 1`` random resized crops (+ flips) after the identity view; ``count = 1`` when
    ``config.enabled`` is false. Without ``generator`` the draw is seeded by ``config.seed``."""
    count = config.count if config.enabled else 1
    if generator is None:
        generator = torch.Generator().manual_seed(config.seed)
    extra = count - 1
    uniform = torch.rand((4, extra), generator=generator, dtype=torch.float64)
    scale = config.crop_scale[0] + (config.crop_scale[1] - config.crop_scale[0]) * uniform[0]
    log_low, log_high = math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1])
    ratio = torch.exp(log_low + (log_high - log_low) * uniform[1])
    width = (scale * ratio).sqrt().clamp(max=1.0)
    height = (scale / ratio).sqrt().clamp(max=1.0)
    center_x = (1 - width) * (2 * uniform[2] - 1)
    center_y = (1 - height) * (2 * uniform[3] - 1)
    mirror = torch.where(torch.rand(extra, generator=generator, dtype=torch.float64) < config.flip_probability,
                         -1.0, 1.0)
    one, nil = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    return ViewParams(width=torch.cat([one, width]).float(), height=torch.cat([one, height]).float(),
                      center_x=torch.cat([nil, center_x]).float(), center_y=torch.cat([nil, center_y]).float(),
                      mirror=torch.cat([one, mirror]).float())


def make_views(pixels: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """``[B, 3, S, S]`` pixels in [0, 1] -> ``[B, N, 3, S, S]`` views, same size as the input, view 0 = the input.

    Differentiable in ``pixels``; the identity view is the input tensor itself (no resampling error).
    """
    batch, channels, height, width = pixels.shape
    if params.count == 1:
        return pixels.unsqueeze(1)
    theta = params.theta(device=pixels.device, dtype=pixels.dtype)[1:]  # [N-1, 2, 3]
    extra = theta.shape[0]
    grid = F.affine_grid(theta, [extra, channels, height, width], align_corners=False)  # [N-1, S, S, 2]
    grid = grid.unsqueeze(0).expand(batch, -1, -1, -1, -1).reshape(batch * extra, height, width, 2)
    source = pixels.unsqueeze(1).expand(-1, extra, -1, -1, -1).reshape(batch * extra, channels, height, width)
    resampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.cat([pixels.unsqueeze(1), resampled.view(batch, extra, channels, height, width)], dim=1)
