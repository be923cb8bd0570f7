from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.config import ColaConfig, DetectorConfig, TaxonomyConfig, ViewsConfig
from cola_moderation.operators.detector.calibration import (
    CALIBRATION_FILE,
    DetectorCalibration,
    detector_settings,
    load_calibration,
)
from cola_moderation.operators.moderator import Moderator
from cola_moderation.pipeline.research.attacks import round_to_8bit
from cola_moderation.pipeline.research.calibration_fit import fit_calibration
from cola_moderation.pipeline.runtime.config import parse_config

TAXONOMY = TaxonomyConfig(labels=["cat", "dog", "car", "tree"], templates=("a photo of a {}.", "a sketch of a {}."))
DETECTOR = DetectorConfig(noise_probe=True, noise_shift_two_sided=True)


def _images(count: int, seed: int, size: int) -> torch.Tensor:
    """Smooth random 8-bit images (a coarse random grid upsampled), a stand-in for natural clean images."""
    coarse = torch.rand(count, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return round_to_8bit(torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                                         align_corners=False))


def test_calibration_hits_the_requested_fpr_on_held_out_clean_images(tiny_backbone: Backbone) -> None:
    size = tiny_backbone.geometry.size
    moderator = Moderator(tiny_backbone, taxonomy=TAXONOMY, method="cascade", detector=DETECTOR,
                          cola=ColaConfig(views=ViewsConfig(count=3)))
    values, measured = fit_calibration(moderator, _images(2000, 1, size), fpr=0.05, method="cascade")
    assert set(values) >= {"noise_shift_center", "noise_shift_scale", "view_shift_center", "threshold"}
    assert 0.04 <= measured["flagged"] <= 0.05
    moderator.detector.config = DETECTOR.model_copy(update=values)
    with torch.inference_mode():
        held_out = _images(2000, 2, size)
        flagged = torch.cat([moderator.verdict(held_out[i : i + 500]).suspected for i in range(0, 2000, 500)])
    assert abs(float(flagged.double().mean()) - 0.05) <= 0.01


def _config(model_dir: Path, **detector: object) -> dict[str, object]:
    return {"model": {"path": str(model_dir), "device": "cpu"}, "taxonomy": {"labels": ["cat", "dog", "car"]},
            "method": "cascade", "detector": {"noise_probe": True, **detector}}


def test_calibration_beside_the_model_is_loaded_with_it_and_its_absence_warned(
        tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    with caplog.at_level(logging.WARNING):
        plain = parse_config(_config(model_dir))
    assert "no calibration" in caplog.text and plain.detector.calibration_source is None
    calibration = DetectorCalibration(values={"noise_shift_center": -7.5, "threshold": 0.8},
                                      settings=detector_settings(plain.detector, "cascade"), fpr=0.05,
                                      measured={"flagged": 0.05, "images": 10},
                                      data={"dataset": "train", "slice": "[0:10]", "images": 10})
    calibration.write(model_dir / CALIBRATION_FILE)
    assert load_calibration(model_dir / CALIBRATION_FILE).values == calibration.values
    loaded = parse_config(_config(model_dir))
    assert loaded.detector.noise_shift_center == -7.5 and loaded.detector.threshold == 0.8
    assert "train [0:10]" in str(loaded.detector.calibration_source)
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # computed under other settings: not applied, and said so
        other = parse_config(_config(model_dir, noise_amplitude=0.05))
    assert other.detector.threshold == 0.5 and "other settings" in caplog.text
    assert parse_config(_config(model_dir), calibrate=False).detector.threshold == 0.5
