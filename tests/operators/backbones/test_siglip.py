"""SigLIP checkpoints (a random ``SiglipModel`` with a real ``SiglipTokenizer`` over a sentencepiece model trained
here): embeddings and sigmoid scores equal transformers' own ``SiglipModel`` forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cola_moderation.operators.backbones.checkpoint import SIGLIP_TINY, save_siglip_checkpoint
from cola_moderation.operators.backbones.registry import load_backbone, load_geometry
from cola_moderation.operators.backbones.siglip import SiglipBackbone
from cola_moderation.operators.config import ModelConfig, TaxonomyConfig
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier

LABELS = ("cat", "dog", "red car")


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_siglip_checkpoint(tmp_path_factory.mktemp("siglip"), SIGLIP_TINY, seed=3)


@pytest.fixture(scope="module")
def siglip(siglip_dir: Path) -> SiglipBackbone:
    backbone = load_backbone(ModelConfig(path=str(siglip_dir), device="cpu"))
    assert isinstance(backbone, SiglipBackbone)
    return backbone


def test_family_geometry_and_bias(siglip: SiglipBackbone, siglip_dir: Path) -> None:
    assert siglip.family == "siglip" and siglip.embed_dim == SIGLIP_TINY.text_width
    assert siglip.geometry.size == 32 and siglip.geometry.mean == (0.5, 0.5, 0.5)
    assert load_geometry(ModelConfig(path=str(siglip_dir))) == siglip.geometry
    assert siglip.logit_scale == pytest.approx(10.0) and siglip.logit_bias == pytest.approx(-1.0)


def test_sigmoid_scores_equal_siglip_model_forward(siglip: SiglipBackbone, siglip_dir: Path) -> None:
    from transformers import SiglipModel

    reference = SiglipModel.from_pretrained(siglip_dir).eval()
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = [f"a photo of a {label}." for label in LABELS]
    tokens = siglip.tokenizer(texts, padding="max_length", max_length=SIGLIP_TINY.context_length, truncation=True,
                              return_tensors="pt")
    with torch.no_grad():
        out = reference(input_ids=tokens["input_ids"], pixel_values=(pixels - 0.5) / 0.5)
    images = siglip.encode_images(pixels)
    torch.testing.assert_close(images, out.image_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(siglip.encode_texts(texts), out.text_embeds, rtol=0, atol=1e-6)
    taxonomy = TaxonomyConfig(labels=LABELS, templates=("a photo of a {}.",))
    classifier = ZeroShotClassifier(TextBank.build(siglip, taxonomy), logit_scale=siglip.logit_scale,
                                    logit_bias=siglip.logit_bias)
    scores = classifier.scores(images)
    torch.testing.assert_close(scores.probs, out.logits_per_image.sigmoid(), rtol=0, atol=1e-6)
    assert not torch.allclose(scores.probs.sum(-1), torch.ones(4))  # independent per-class probabilities
    assert float(scores.probs.min()) > 0.01  # the fixture's scale/bias give non-degenerate scores


def test_texts_are_padded_to_the_full_context(siglip: SiglipBackbone) -> None:
    short, padded = siglip.encode_texts(["cat"]), siglip.encode_texts(["cat", "a photo of a dog on a street."])
    torch.testing.assert_close(short[0], padded[0], rtol=0, atol=1e-6)  # the batch's longest text changes nothing


def test_gradients_reach_pixels(siglip: SiglipBackbone) -> None:
    pixels = torch.rand(2, 3, 32, 32, requires_grad=True)
    siglip.encode_images(pixels, grad=True).sum().backward()
    assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0
