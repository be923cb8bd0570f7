from __future__ import annotations

import torch

from cola_moderation.operators.config import ViewsConfig
from cola_moderation.operators.defences.cola.views import make_views, sample_view_params


def _pixels(batch: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_view_zero_is_the_original_and_views_stay_in_range() -> None:
    pixels = _pixels()
    views = make_views(pixels, sample_view_params(ViewsConfig(count=5)))
    assert views.shape == (3, 5, 3, 16, 16)
    torch.testing.assert_close(views[:, 0], pixels, atol=0, rtol=0)
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    assert not torch.allclose(views[:, 1], pixels)


def test_views_are_seeded_and_independent_of_the_batch() -> None:
    pixels = _pixels(batch=4)
    params = sample_view_params(ViewsConfig(count=4, seed=7))
    again = sample_view_params(ViewsConfig(count=4, seed=7))
    torch.testing.assert_close(params.theta(device=torch.device("cpu"), dtype=torch.float32),
                               again.theta(device=torch.device("cpu"), dtype=torch.float32))
    whole = make_views(pixels, params)
    alone = make_views(pixels[2:3], params)
    torch.testing.assert_close(whole[2:3], alone, atol=1e-6, rtol=0)
    other = sample_view_params(ViewsConfig(count=4, seed=8))
    assert not torch.allclose(make_views(pixels, other)[:, 1:], whole[:, 1:])


def test_full_crop_with_flip_is_a_mirror_image() -> None:
    pixels = _pixels()
    params = sample_view_params(ViewsConfig(count=2, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                                            flip_probability=1.0))
    views = make_views(pixels, params)
    torch.testing.assert_close(views[:, 1], pixels.flip(-1), atol=1e-5, rtol=0)


def test_crop_scale_bounds_the_crop_area() -> None:
    params = sample_view_params(ViewsConfig(count=64, crop_scale=(0.5, 0.6), crop_ratio=(1.0, 1.0)))
    area = params.width[1:] * params.height[1:]
    assert float(area.min()) >= 0.5 - 1e-6 and float(area.max()) <= 0.6 + 1e-6
    # crops lie inside the image
    assert float((params.center_x.abs() + params.width).max()) <= 1 + 1e-6
    assert float((params.center_y.abs() + params.height).max()) <= 1 + 1e-6


def test_disabled_views_leave_only_the_original() -> None:
    params = sample_view_params(ViewsConfig(enabled=False, count=5))
    assert params.count == 1
    pixels = _pixels()
    torch.testing.assert_close(make_views(pixels, params)[:, 0], pixels)


def test_views_are_differentiable() -> None:
    pixels = _pixels().requires_grad_(True)
    views = make_views(pixels, sample_view_params(ViewsConfig(count=3)))
    views[:, 1:].sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
