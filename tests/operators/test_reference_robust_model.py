"""The bundled robust reference model (``builtin:reference-robust``, ``configs/reference-robust.yaml``): the reference
model's text tower and tokenizer bit for bit, a model card, meaningful clean labels, and far more accuracy than the
undefended reference under the same PGD at 8/255 (a quick check; the full figures are in docs/finetune.md)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open

from cola_moderation import resources
from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.backbones.transformers_clip import IMAGE_TOWER_PREFIXES as TRAINED_PREFIXES
from cola_moderation.operators.decode import ImageDecoder
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier
from cola_moderation.pipeline.research.attacks import clip_cross_entropy, pgd_linf
from cola_moderation.pipeline.runtime.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not a dict


def test_robust_model_keeps_the_reference_text_side() -> None:
    robust, reference = resources.builtin_model_dir("reference-robust"), resources.builtin_model_dir("reference")
    assert (robust / "README.md").read_text().startswith("# Adversarially fine-tuned CLIP (TECOA)")
    tuned, base = _tensors(robust), _tensors(reference)
    assert tuned.keys() == base.keys()
    for key in base:
        if not key.startswith(TRAINED_PREFIXES):
            assert tuned[key].numpy().tobytes() == base[key].numpy().tobytes(), key
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (robust / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.fixture(scope="module")
def sample() -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    config = load_config(REPO / "configs" / "reference-robust.yaml")
    names = config.taxonomy.label_names
    rows = [r for r in pq.read_table(REPO / "samples" / "sample.parquet").to_pylist()
            if r["true_label"] is not None and not r["attacked"]][:64]
    with ImageDecoder(size=28) as decoder:
        batch = decoder.decode([r["image"] for r in rows])
    assert len(batch.indices) == len(rows)
    return batch.pixels, torch.tensor([names.index(r["true_label"]) for r in rows]), names


def _accuracy(config_name: str, pixels: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    config = load_config(REPO / "configs" / config_name)
    backbone = load_backbone(config.model.model_copy(update={"device": "cpu"}))
    classifier = ZeroShotClassifier(TextBank.build(backbone, config.taxonomy), logit_scale=backbone.logit_scale)
    attacked = pgd_linf(clip_cross_entropy(backbone, classifier), pixels, labels, eps=eps, steps=10,
                        generator=torch.Generator().manual_seed(0))
    predicted = classifier.scores(backbone.encode_images(attacked)).predicted
    return float((predicted == labels).float().mean())


def test_robust_model_labels_clean_images(sample: tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]) -> None:
    pixels, labels, _ = sample
    assert _accuracy("reference-robust.yaml", pixels, labels, eps=0.0) >= 0.7  # chance: 0.1


def test_robust_model_resists_pgd_far_better(sample: tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]) -> None:
    pixels, labels, _ = sample
    undefended = _accuracy("reference.yaml", pixels, labels, eps=8 / 255)
    robust = _accuracy("reference-robust.yaml", pixels, labels, eps=8 / 255)
    assert robust >= undefended + 0.3, (robust, undefended)
