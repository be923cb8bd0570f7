"""Detector calibration kept beside the model: the centres, scales and threshold of the adversarial-upload detector,
measured on clean images of the deployment's own model for a target false-positive rate (``cola calibrate``).

The detector's statistics (the noise probe's log shift, the view shifts) depend on the checkpoint, its dtype and
the probe settings, so constants fitted on one model do not carry over to another. A calibration file
``MODEL_DIR/detector-calibration.json`` is applied when the config is loaded (``detector.calibration: auto``) if it
was computed under the same detector settings; otherwise, or when there is none, a warning says the config's
constants are used as they are.

File schema ``cola-detector-calibration/1``::

    schema      "cola-detector-calibration/1"
    values      {detector key: value}   what calibration sets (centres, scales, threshold)
    settings    {detector key or "method": value}   the settings it was computed under (must match to apply)
    fpr         the target clean false-positive rate
    measured    {flagged: share of the calibration images flagged with these values, images}
    data        {dataset, slice, images}   the (training) images it was computed on
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola_moderation.operators.config import DetectorConfig, ModelConfig
from cola_moderation.operators.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

CALIBRATION_FILE = "detector-calibration.json"
SCHEMA = "cola-detector-calibration/1"
CALIBRATED_KEYS = ("noise_shift_center", "noise_shift_scale", "probe_shift_center", "view_shift_center",
                   "view_shift_scale", "threshold")
SETTING_KEYS = ("probe", "noise_probe", "noise_amplitude", "noise_shift_two_sided", "noise_shift_weight",
                "view_shift_weight", "residual_weight", "residual_center", "residual_scale", "disagreement_weight",
                "confidence_drop_weight", "bias")


@dataclass(frozen=True)
class DetectorCalibration:
    values: dict[str, float]
    settings: dict[str, Any]
    fpr: float
    measured: dict[str, Any]
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "values": self.values, "settings": self.settings, "fpr": self.fpr,
                "measured": self.measured, "data": self.data}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def mismatches(self, detector: DetectorConfig, method: str) -> list[str]:
        """Settings that differ between this calibration and ``detector`` / ``method`` (empty: it applies)."""
        current = detector_settings(detector, method)
        return [f"{key}: calibrated with {self.settings.get(key)!r}, config has {value!r}"
                for key, value in current.items() if self.settings.get(key) != value]


def detector_settings(detector: DetectorConfig, method: str) -> dict[str, Any]:
    """The settings a calibration depends on (see :data:`SETTING_KEYS`), plus the method."""
    dumped = detector.model_dump(mode="json")
    return {"method": method, **{key: dumped[key] for key in SETTING_KEYS}}


def load_calibration(path: Path) -> DetectorCalibration:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read detector calibration {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ConfigError(f"{path}: not a {SCHEMA} file")
    unknown = sorted(set(data.get("values", {})) - set(CALIBRATED_KEYS))
    if unknown:
        raise ConfigError(f"{path}: values {unknown} are not calibrated detector keys ({', '.join(CALIBRATED_KEYS)})")
    return DetectorCalibration(values={k: float(v) for k, v in data["values"].items()},
                               settings=dict(data.get("settings", {})), fpr=float(data.get("fpr", float("nan"))),
                               measured=dict(data.get("measured", {})), data=dict(data.get("data", {})))


def model_directory(model: ModelConfig) -> Path | None:
    """The local directory holding the model's weights (``builtin:`` names resolved), or ``None`` for hub ids."""
    from cola_moderation.operators.backbones.sources import ModelSource

    try:
        return ModelSource.resolve(model.path, model.revision).directory
    except ModelLoadError:  # a missing builtin model fails later, where the model is loaded, with its own message
        return None


def calibration_path(model: ModelConfig, detector: DetectorConfig) -> Path | None:
    """Where this model's calibration is (``detector.calibration``: ``auto`` = beside the model; ``none``)."""
    if detector.calibration == "none":
        return None
    if detector.calibration != "auto":
        return Path(detector.calibration)
    directory = model_directory(model)
    return None if directory is None else directory / CALIBRATION_FILE


def calibrated_detector(model: ModelConfig, detector: DetectorConfig, method: str) -> DetectorConfig:
    """``detector`` with the model's calibration applied (centres, scales, threshold), or unchanged with a warning
    when the detector is on and no matching calibration exists."""
    if not detector.enabled or detector.calibration == "none":
        return detector
    path = calibration_path(model, detector)
    if path is None or not path.is_file():
        if detector.calibration != "auto":
            raise ConfigError(f"detector.calibration: {detector.calibration} does not exist")
        log.warning("detector: no calibration for model %s (expected %s); using the config's constants, fitted on "
                    "the bundled reference model: run `cola calibrate` on clean images of this model",
                    model.path, path or f"<model directory>/{CALIBRATION_FILE}")
        return detector
    calibration = load_calibration(path)
    mismatches = calibration.mismatches(detector, method)
    if mismatches:
        log.warning("detector: calibration %s was computed under other settings (%s); not applied, using the "
                    "config's constants: rerun `cola calibrate`", path, "; ".join(mismatches))
        return detector
    source = f"{path} ({calibration.data.get('dataset')} {calibration.data.get('slice')}, fpr {calibration.fpr})"
    return detector.model_copy(update={**calibration.values, "calibration_source": source})
