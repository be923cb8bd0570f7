"""Cross-check: torchattacks' PGD and the harness's pgd_linf are the same attack on the wrapped CLIP model."""

from __future__ import annotations

import pytest
import torch

from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier
from cola_moderation.pipeline.research.attacks import clip_cross_entropy, pgd_linf
from cola_moderation.pipeline.research.evaluation.wrapped import ZeroShotLogits

torchattacks = pytest.importorskip("torchattacks")


def test_wrapped_model_is_plain_clip(tiny_backbone, tiny_taxonomy_classifier) -> None:
    model = ZeroShotLogits(tiny_backbone, tiny_taxonomy_classifier)
    pixels = torch.rand(3, 3, tiny_backbone.geometry.size, tiny_backbone.geometry.size,
                        generator=torch.Generator().manual_seed(0))
    expected = tiny_taxonomy_classifier.logits(tiny_backbone.encode_images(pixels))
    torch.testing.assert_close(model(pixels), expected)
    assert next(model.parameters()).device == tiny_backbone.device


def test_torchattacks_pgd_matches_pgd_linf_without_random_start(
        tiny_backbone, tiny_taxonomy_classifier) -> None:
    size = tiny_backbone.geometry.size
    pixels = torch.rand(16, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = tiny_taxonomy_classifier.logits(tiny_backbone.encode_images(pixels)).argmax(-1)
    eps, alpha, steps = 8 / 255, 2 / 255, 4
    ours = pgd_linf(clip_cross_entropy(tiny_backbone, tiny_taxonomy_classifier), pixels, labels, eps=eps,
                    steps=steps, step_size=alpha, random_start=False)
    model = ZeroShotLogits(tiny_backbone, tiny_taxonomy_classifier)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(pixels, labels)
    assert float((ours - pixels).abs().max()) > eps / 2  # the attack moved the pixels
    # identical algorithm: the sum vs mean loss reduction only rescales gradients, so the signed steps agree except
    # where a gradient entry is ~0 and rounding picks a different sign
    differing = (ours - theirs).abs().gt(1e-6).float().mean()
    assert float(differing) < 0.01
    with torch.inference_mode():
        ours_pred = tiny_taxonomy_classifier.logits(tiny_backbone.encode_images(ours)).argmax(-1)
        theirs_pred = tiny_taxonomy_classifier.logits(tiny_backbone.encode_images(theirs)).argmax(-1)
    assert ours_pred.tolist() == theirs_pred.tolist()


@pytest.fixture(scope="module")
def tiny_taxonomy_classifier(tiny_backbone) -> ZeroShotClassifier:
    from cola_moderation.operators.config import TaxonomyConfig

    taxonomy = TaxonomyConfig.model_validate({"labels": [{"name": n} for n in ("cat", "dog", "car", "tree")]})
    return ZeroShotClassifier(TextBank.build(tiny_backbone, taxonomy), logit_scale=tiny_backbone.logit_scale)
