"""The reference-model recipe: captions, augmentation, loss, and a quick end-to-end smoke run on a tiny subset."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cola_moderation.operators.backbones.checkpoint import TINY
from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.config import ModelConfig, TaxonomyConfig
from cola_moderation.operators.errors import ConfigError
from cola_moderation.pipeline.research.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, FashionMnist, load_fashion_mnist
from cola_moderation.pipeline.research.reference_training import (
    TRAIN_TEMPLATES,
    CaptionSampler,
    TrainingRecipe,
    augment,
    caption_pool,
    check_held_out,
    class_aware_loss,
    evaluate_zero_shot,
    save_reference,
    train_reference,
)
from cola_moderation.pipeline.runtime.config import load_config

REPO = Path(__file__).resolve().parents[3]
needs_data = pytest.mark.skipif(not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file(),
                                reason="sudo apt-get install dataset-fashion-mnist")


def reference_taxonomy() -> TaxonomyConfig:
    return load_config(REPO / "configs" / "reference.yaml").taxonomy


def test_reference_config_templates_are_held_out() -> None:
    taxonomy = reference_taxonomy()
    check_held_out(taxonomy)
    assert taxonomy.label_names == CLASS_NAMES
    leaked = taxonomy.model_copy(update={"templates": (*taxonomy.templates, TRAIN_TEMPLATES[0])})
    with pytest.raises(ConfigError, match="training templates"):
        check_held_out(leaked)


def test_caption_pool_and_sampler_cover_every_class() -> None:
    texts, labels = caption_pool()
    assert len(texts) == len(labels)
    assert torch.bincount(labels).min() > 100
    sampler = CaptionSampler(texts, labels, max_length=32, insert_prob=1.0)
    generator = torch.Generator().manual_seed(0)
    input_ids, mask, caption_labels = sampler.sample(3, generator)
    assert input_ids.shape == mask.shape and input_ids.shape[0] == 3 * len(CLASS_NAMES) <= 32 * 3 * 10
    assert input_ids.shape[1] <= 32
    assert caption_labels.tolist() == [k for k in range(len(CLASS_NAMES)) for _ in range(3)]
    lengths = mask.sum(dim=1)
    rows = torch.arange(len(lengths))
    assert (input_ids[rows, 0] == 49406).all() and (input_ids[rows, lengths - 1] == 49407).all()


def test_augment_shifts_and_flips_within_range() -> None:
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    first = augment(images, torch.Generator().manual_seed(3))
    again = augment(images, torch.Generator().manual_seed(3))
    assert first.shape == (16, 3, 28, 28)
    torch.testing.assert_close(first, again)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert not torch.equal(first[:, 0], images.float() / 255)
    unshifted = augment(images, torch.Generator().manual_seed(3), pad=0)
    base = images.float() / 255
    for i in range(16):
        assert torch.equal(unshifted[i, 0], base[i]) or torch.equal(unshifted[i, 0], base[i].flip(-1))


def test_class_aware_loss_prefers_aligned_features() -> None:
    labels = torch.tensor([0, 1, 2, 0])
    text_labels = torch.tensor([0, 1, 2])
    texts = torch.eye(3, 8)
    aligned = texts[labels]
    scale = torch.tensor(20.0)
    good = class_aware_loss(aligned, texts, labels, text_labels, scale)
    bad = class_aware_loss(texts[torch.tensor([1, 2, 0, 1])], texts, labels, text_labels, scale)
    # the minimum is the entropy of the targets: class 0's text has two positive images (ln 2 / 3 / 2 = 0.1155)
    torch.testing.assert_close(good, torch.tensor(math.log(2) / 6), atol=1e-4, rtol=0)
    assert float(bad) > 10.0
    # a text whose class has no image in the batch contributes nothing
    extra = class_aware_loss(aligned, torch.eye(4, 8), labels, torch.tensor([0, 1, 2, 3]), scale)
    torch.testing.assert_close(extra, good, atol=1e-4, rtol=0)


@needs_data
def test_smoke_training_run_learns_and_saves_a_loadable_model(tmp_path: Path) -> None:
    train = load_fashion_mnist("train")
    shape = replace(TINY, image_size=28, patch_size=7, vision_width=48, text_width=48, projection_dim=32,
                    context_length=32)
    recipe = TrainingRecipe(shape=shape, epochs=4, batch_size=32, lr=1e-3, warmup_steps=10, captions_per_class=2,
                            limit=2048, device="cpu", seed=0, threads=1)
    seen: list[int] = []
    threads_before = torch.get_num_threads()
    result = train_reference(recipe, train, progress=False, on_epoch_end=lambda epoch, _: seen.append(epoch))
    assert seen == [1, 2, 3, 4]
    assert torch.get_num_threads() == threads_before
    assert result.steps == len(result.losses) == 4 * (2048 // 32)
    first, last = sum(result.losses[:32]) / 32, sum(result.losses[-32:]) / 32
    assert last < first - 0.3, (first, last)

    directory = save_reference(result.model, tmp_path / "model")
    assert json.loads((directory / "config.json").read_text())["dtype"] == "float16"
    backbone = load_backbone(ModelConfig(path=str(directory), device="cpu"))
    assert backbone.geometry.size == 28
    test = load_fashion_mnist("test")
    subset = FashionMnist(images=test.images[:200], labels=test.labels[:200])
    report = evaluate_zero_shot(backbone, reference_taxonomy(), subset)
    assert report.count == 200
    assert set(report.per_class) == set(CLASS_NAMES)
    assert report.accuracy > 0.2, report  # chance is 0.1; 256 steps on 2,048 images
