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


def test_probabilities_equal_a_hand_written_clip_forward(tiny_backbone: Backbone) -> None:
    """Single template, no synonyms: our probabilities are CLIPModel's own logits_per_image softmax."""
    taxonomy = TaxonomyConfig(labels=("cat", "dog", "car", "tree"), templates=("a photo of a {}.",))
    classifier = ZeroShotClassifier(TextBank.build(tiny_backbone, taxonomy), logit_scale=tiny_backbone.logit_scale)
    pixels = torch.rand(5, 3, 32, 32)
    probs = classifier.scores(tiny_backbone.encode_images(pixels)).probs

    model, geometry = tiny_backbone.model, tiny_backbone.geometry
    tokens = tiny_backbone.tokenizer([f"a photo of a {label}." for label in ("cat", "dog", "car", "tree")],
                                     padding=True, return_tensors="pt")
    mean, std = torch.tensor(geometry.mean).view(1, 3, 1, 1), torch.tensor(geometry.std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=(pixels - mean) / std)
    torch.testing.assert_close(probs, out.logits_per_image.softmax(dim=-1), atol=1e-5, rtol=0)


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
