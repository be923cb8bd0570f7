from __future__ import annotations

import pytest
import torch

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.config import ColaConfig, TaxonomyConfig
from cola_moderation.operators.defences.cola.scorer import ColaScorer
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier
from cola_moderation.pipeline.research.attacks import (
    apgd_linf,
    clip_cross_entropy,
    cola_cross_entropy,
    logits_loss,
    loss_of_logits,
    pgd_linf,
    round_to_8bit,
)

TAXONOMY = TaxonomyConfig(labels=["cat", "dog", "car", "tree"], templates=("a photo of a {}.", "a sketch of a {}."))


def _setup(backbone: Backbone) -> tuple[ZeroShotClassifier, ColaScorer, torch.Tensor, torch.Tensor]:
    bank = TextBank.build(backbone, TAXONOMY)
    classifier = ZeroShotClassifier(bank, logit_scale=backbone.logit_scale)
    pixels = torch.rand(8, 3, backbone.geometry.size, backbone.geometry.size,
                        generator=torch.Generator().manual_seed(0))
    labels = classifier.scores(backbone.encode_images(pixels)).predicted
    return classifier, ColaScorer(bank, ColaConfig(), logit_scale=backbone.logit_scale), pixels, labels


def test_pgd_stays_in_the_ball_and_the_box(tiny_backbone: Backbone) -> None:
    classifier, _, pixels, labels = _setup(tiny_backbone)
    eps = 8 / 255
    adversarial = pgd_linf(clip_cross_entropy(tiny_backbone, classifier), pixels, labels, eps=eps, steps=5,
                           generator=torch.Generator().manual_seed(1))
    assert adversarial.shape == pixels.shape and not adversarial.requires_grad
    assert float((adversarial - pixels).abs().max()) <= eps + 1e-6
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1


def test_pgd_raises_the_loss_far_more_than_random_noise(tiny_backbone: Backbone) -> None:
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
def test_adaptive_attack_through_cola_raises_cola_loss(tiny_backbone: Backbone, eot_seed: int | None) -> None:
    _, scorer, pixels, labels = _setup(tiny_backbone)
    loss = cola_cross_entropy(tiny_backbone, scorer, eot_seed=eot_seed)
    fixed = cola_cross_entropy(tiny_backbone, scorer)
    adversarial = pgd_linf(loss, pixels[:4], labels[:4], eps=16 / 255, steps=4,
                           generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert float(fixed(adversarial, labels[:4]).mean()) > float(fixed(pixels[:4], labels[:4]).mean())


def test_zero_eps_is_the_identity(tiny_backbone: Backbone) -> None:
    classifier, _, pixels, labels = _setup(tiny_backbone)
    out = pgd_linf(clip_cross_entropy(tiny_backbone, classifier), pixels, labels, eps=0.0)
    torch.testing.assert_close(out, pixels, atol=0, rtol=0)
    with pytest.raises(ValueError, match="eps and steps must be >= 0"):
        pgd_linf(clip_cross_entropy(tiny_backbone, classifier), pixels, labels, eps=-1.0)


def test_apgd_lowers_accuracy_at_least_as_much_as_pgd10(tiny_backbone: Backbone) -> None:
    _, scorer, _, _ = _setup(tiny_backbone)
    pixels = round_to_8bit(torch.rand(32, 3, tiny_backbone.geometry.size, tiny_backbone.geometry.size,
                                      generator=torch.Generator().manual_seed(7)))

    def logits(x: torch.Tensor) -> torch.Tensor:  # COLA with its deployed views (plain tiny CLIP barely moves)
        return -scorer.score_pixels(tiny_backbone, x, grad=True).distances / scorer.temperature

    with torch.no_grad():
        labels = logits(pixels).argmax(1)
    eps = 1 / 255
    pgd = round_to_8bit(pgd_linf(loss_of_logits(logits, "ce"), pixels, labels, eps=eps, steps=10,
                                 generator=torch.Generator().manual_seed(1)))
    apgd = round_to_8bit(apgd_linf(logits, pixels, labels, eps=eps, loss="ce", steps=100,
                                   generator=torch.Generator().manual_seed(1)))
    assert float((apgd - pixels).abs().max()) <= eps + 1e-6 and float(apgd.min()) >= 0
    with torch.no_grad():
        accuracy = {name: float((logits(x).argmax(1) == labels).float().mean()) for name, x in
                    (("pgd", pgd), ("apgd", apgd))}
    assert 0.0 < accuracy["pgd"] < 1.0  # PGD-10 only partly succeeds, so the comparison can fail
    assert accuracy["apgd"] <= accuracy["pgd"]


def test_dlr_loss_is_scale_invariant_and_positive_when_wrong() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -1.0]])
    labels = torch.tensor([0, 0])
    dlr = logits_loss("dlr", logits, labels)
    torch.testing.assert_close(dlr, logits_loss("dlr", 10 * logits, labels))
    assert float(dlr[0]) < 0 < float(dlr[1])


def test_attack_on_the_deployed_views_lowers_cola_at_least_as_much_as_random_view_eot(
        tiny_backbone: Backbone) -> None:
    _, scorer, _, _ = _setup(tiny_backbone)
    pixels = torch.rand(32, 3, tiny_backbone.geometry.size, tiny_backbone.geometry.size,
                        generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        labels = scorer.score_pixels(tiny_backbone, pixels).predicted
    eps = 2 / 255
    results = {}
    for name, seed in (("deployed", None), ("eot", 5)):
        adversarial = round_to_8bit(pgd_linf(cola_cross_entropy(tiny_backbone, scorer, eot_seed=seed), pixels,
                                             labels, eps=eps, steps=10, generator=torch.Generator().manual_seed(2)))
        with torch.no_grad():
            results[name] = float((scorer.score_pixels(tiny_backbone, adversarial).predicted == labels).float().mean())
    assert results["deployed"] < 1.0
    assert results["deployed"] <= results["eot"]
