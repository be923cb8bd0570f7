from __future__ import annotations

import pytest
import torch

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.config import LabelConfig, TaxonomyConfig
from cola_moderation.operators.defences.text_bank import TextBank, class_texts
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier

TAXONOMY = TaxonomyConfig(
    labels=(LabelConfig(name="cat", synonyms=("cat", "kitten")), LabelConfig(name="dog"),
            LabelConfig(name="sports_car", descriptions=("a fast red car on a race track.",))),
    templates=("a photo of a {}.", "a drawing of a {}."),
)


def test_class_texts_expand_templates_synonyms_and_descriptions() -> None:
    texts = class_texts(TAXONOMY)
    assert texts[0] == ["a photo of a cat.", "a drawing of a cat.", "a photo of a kitten.", "a drawing of a kitten."]
    assert texts[1] == ["a photo of a dog.", "a drawing of a dog."]
    assert texts[2] == ["a photo of a sports car.", "a drawing of a sports car.", "a fast red car on a race track."]


def test_text_bank_is_padded_and_masked(tiny_backbone: Backbone) -> None:
    bank = TextBank.build(tiny_backbone, TAXONOMY)
    assert bank.embeddings.shape == (3, 4, tiny_backbone.embed_dim)
    assert bank.mask.sum(dim=1).tolist() == [4, 2, 3]
    assert float(bank.embeddings[1, 2:].abs().sum()) == 0.0
    assert bank.flat().shape == (9, tiny_backbone.embed_dim)


def test_a_logit_bias_gives_independent_sigmoid_scores_with_the_same_top_1(tiny_backbone: Backbone) -> None:
    taxonomy = TaxonomyConfig(labels=("cat", "dog", "car", "tree"), templates=("a photo of a {}.",))
    bank = TextBank.build(tiny_backbone, taxonomy)
    features = tiny_backbone.encode_images(torch.rand(5, 3, 32, 32))
    softmax = ZeroShotClassifier(bank, logit_scale=10.0).scores(features)
    sigmoid = ZeroShotClassifier(bank, logit_scale=10.0, logit_bias=-2.0).scores(features)
    expected = (10.0 * features @ bank.class_means().T - 2.0).sigmoid()
    torch.testing.assert_close(sigmoid.probs, expected, rtol=0, atol=1e-6)
    assert torch.equal(sigmoid.predicted, softmax.predicted)
    torch.testing.assert_close(softmax.probs.sum(-1), torch.ones(5))


def test_templates_are_averaged_then_renormalised(tiny_backbone: Backbone) -> None:
    bank = TextBank.build(tiny_backbone, TAXONOMY)
    expected = torch.nn.functional.normalize(
        tiny_backbone.encode_texts(class_texts(TAXONOMY)[1]).mean(dim=0), dim=-1)
    torch.testing.assert_close(bank.class_means()[1], expected)


def test_top_k_and_margin(tiny_backbone: Backbone) -> None:
    classifier = ZeroShotClassifier(TextBank.build(tiny_backbone, TAXONOMY), logit_scale=100.0)
    scores = classifier.scores(tiny_backbone.encode_images(torch.rand(2, 3, 32, 32)))
    torch.testing.assert_close(scores.probs.sum(dim=-1), torch.ones(2))
    top = scores.top_k(5)
    assert [len(row) for row in top] == [3, 3]  # capped at K
    assert top[0][0][1] >= top[0][1][1] >= top[0][2][1]
    assert top[0][0][0] == TAXONOMY.label_names[int(scores.predicted[0])]
    assert float(scores.margin()[0]) == pytest.approx(top[0][0][1] - top[0][1][1], abs=1e-6)
