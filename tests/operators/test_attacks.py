from __future__ import annotations

import pytest
import torch

from cola_moderation.operators.attacks import clip_cross_entropy, cola_cross_entropy, pgd_linf
from cola_moderation.operators.backbone import ClipBackbone
from cola_moderation.operators.cola import ColaScorer
from cola_moderation.operators.config import ColaConfig, TaxonomyConfig
from cola_moderation.operators.text_bank import TextBank
from cola_moderation.operators.zeroshot import ZeroShotClassifier

TAXONOMY = TaxonomyConfig(labels=["cat", "dog", "car", "tree"], templates=("a photo of a {}.", "a sketch of a {}."))


def _setup(backbone: ClipBackbone) -> tuple[ZeroShotClassifier, ColaScorer, torch.Tensor, torch.Tensor]:
    bank = TextBank.build(backbone, TAXONOMY)
    classifier = ZeroShotClassifier(bank, logit_scale=backbone.logit_scale)
    pixels = torch.rand(8, 3, backbone.geometry.size, backbone.geometry.size,
                        generator=torch.Generator().manual_seed(0))
    labels = classifier.scores(backbone.encode_images(pixels)).predicted
    return classifier, ColaScorer(bank, ColaConfig(), logit_scale=backbone.logit_scale), pixels, labels


def test_pgd_stays_in_the_ball_and_the_box(tiny_backbone: ClipBackbone) -> None:
    classifier, _, pixels, labels = _setup(tiny_backbone)
    eps = 8 / 255
    adversarial = pgd_linf(clip_cross_entropy(tiny_backbone, classifier), pixels, labels, eps=eps, steps=5,
                           generator=torch.Generator().manual_seed(1))
    assert adversarial.shape == pixels.shape and not adversarial.requires_grad
    assert float((adversarial - pixels).abs().max()) <= eps + 1e-6
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1


def test_pgd_raises_the_loss_far_more_than_random_noise(tiny_backbone: ClipBackbone) -> None:
    classifier, _, pixels, labels = _setup(tiny_backbone)
    loss = clip_cross_entropy(tiny_backbone, classifier)
    eps = 16 / 255
    adversarial = pgd_linf(loss, pixels, labels, eps=eps, steps=10, generator=torch.Generator().manual_seed(2))
    signs = torch.sign(torch.randn(pixels.shape, generator=torch.Generator().manual_seed(3)))
    noisy = (pixels + eps * signs).clamp(0, 1)
    with torch.no_grad():
        clean_loss, noise_loss, attack_loss = (float(loss(x, labels).mean()) for x in (pixels, noisy, adversarial))
    assert attack_loss > noise_loss + 0.1 and attack_loss > clean_loss + 0.1
    predicted = classifier.scores(tiny_backbone.encode_images(adversarial)).predicted
    assert float((predicted != labels).float().mean()) >= 0.5


@pytest.mark.parametrize("eot_seed", [None, 5])
def test_adaptive_attack_through_cola_raises_cola_loss(tiny_backbone: ClipBackbone, eot_seed: int | None) -> None:
    _, scorer, pixels, labels = _setup(tiny_backbone)
    loss = cola_cross_entropy(tiny_backbone, scorer, eot_seed=eot_seed)
    fixed = cola_cross_entropy(tiny_backbone, scorer)
    adversarial = pgd_linf(loss, pixels[:4], labels[:4], eps=16 / 255, steps=4,
                           generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert float(fixed(adversarial, labels[:4]).mean()) > float(fixed(pixels[:4], labels[:4]).mean())


def test_zero_eps_is_the_identity(tiny_backbone: ClipBackbone) -> None:
    classifier, _, pixels, labels = _setup(tiny_backbone)
    out = pgd_linf(clip_cross_entropy(tiny_backbone, classifier), pixels, labels, eps=0.0)
    torch.testing.assert_close(out, pixels, atol=0, rtol=0)
    with pytest.raises(ValueError, match="eps and steps must be >= 0"):
        pgd_linf(clip_cross_entropy(tiny_backbone, classifier), pixels, labels, eps=-1.0)
