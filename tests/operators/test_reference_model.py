"""The bundled reference model gives meaningful labels: loaded like any checkpoint (``builtin:reference``), scored
with the held-out templates of ``configs/reference.yaml``, over the committed sample data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cola_moderation import resources
from cola_moderation.operators.backbones.sources import ModelSource
from cola_moderation.operators.errors import DecodeError
from cola_moderation.operators.moderator import Moderation, Moderator
from cola_moderation.pipeline.runtime.config import load_config

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"


@pytest.fixture(scope="module")
def moderator() -> Iterator[Moderator]:
    config = load_config(REPO / "configs" / "reference.yaml")
    assert config.model.path == "builtin:reference"
    model = config.model.model_copy(update={"device": "cpu"})
    built = Moderator.from_config(model=model, taxonomy=config.taxonomy, decode=config.decode, method=config.method,
                                  cola=config.cola, detector=config.detector)
    yield built
    built.close()


def test_bundled_model_is_small_fp16_safetensors() -> None:
    REFERENCE_MODEL_DIR = resources.assets_dir() / "reference-clip"
    assert ModelSource.resolve("builtin:reference").directory == REFERENCE_MODEL_DIR
    weights = REFERENCE_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= 25 * 1024 * 1024
    assert (REFERENCE_MODEL_DIR / "README.md").is_file()


@pytest.mark.parametrize("name", ["sneaker", "bag", "trouser", "ankle_boot"])
def test_loose_sample_images_get_their_label(moderator: Moderator, name: str) -> None:
    [verdict] = moderator.moderate([(SAMPLES / "images" / f"{name}.png").read_bytes()])
    assert isinstance(verdict, Moderation)
    assert verdict.label == name, verdict.topk
    assert verdict.score > 0.5


def test_jpeg_and_corrupt_loose_files(moderator: Moderator) -> None:
    jpeg, corrupt = moderator.moderate([(SAMPLES / "images" / name).read_bytes() for name in ("sandal.jpg",
                                                                                           "corrupt.png")])
    assert isinstance(jpeg, Moderation) and jpeg.label in moderator.taxonomy.label_names
    assert isinstance(corrupt, DecodeError) and "truncated" in str(corrupt)


def test_sample_parquet_accuracy_far_above_chance(moderator: Moderator) -> None:
    rows = pq.read_table(SAMPLES / "sample.parquet").to_pylist()
    verdicts = moderator.moderate([row["image"] for row in rows])
    labelled = [(row, v) for row, v in zip(rows, verdicts, strict=True)
                if row["true_label"] is not None and not row["attacked"]]  # clean images only
    corrupt = [(row, v) for row, v in zip(rows, verdicts, strict=True) if row["true_label"] is None]
    assert len(labelled) == 300 and len(corrupt) == 4
    assert all(isinstance(v, DecodeError) for _, v in corrupt)
    assert all(isinstance(v, Moderation) for _, v in labelled)
    accuracy = sum(v.label == row["true_label"] for row, v in labelled) / len(labelled)  # type: ignore[union-attr]
    assert accuracy >= 0.75, accuracy  # chance is 0.10; the full test set measures ~0.85 (see the model card)


def test_reference_config_flags_most_attacked_sample_copies(moderator: Moderator) -> None:
    """The sample's 20 PGD copies (8/255, crafted on plain CLIP) are mostly flagged by the reference config's
    detector, at a false-positive rate near its calibration (~5% of clean images)."""
    rows = pq.read_table(SAMPLES / "sample.parquet").to_pylist()
    verdicts = moderator.moderate([row["image"] for row in rows])
    attacked = [v for row, v in zip(rows, verdicts, strict=True) if row["attacked"]]
    clean = [v for row, v in zip(rows, verdicts, strict=True) if row["true_label"] is not None and not row["attacked"]]
    assert len(attacked) == 20 and all(isinstance(v, Moderation) for v in attacked + clean)
    flagged = sum(v.suspected_adversarial for v in attacked)  # type: ignore[union-attr]
    false_alarms = sum(v.suspected_adversarial for v in clean)  # type: ignore[union-attr]
    assert flagged >= 14, flagged  # measured: 17 of 20
    assert false_alarms <= 0.08 * len(clean), false_alarms  # measured: 12 of 300
