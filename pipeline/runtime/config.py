"""Load a YAML pipeline config into frozen, validated sections.

Unknown keys and bad values raise :class:`~cola_moderation.operators.errors.ConfigError` naming the key path, e.g.
``model.device: must be auto, cpu, cuda or cuda:N, got 'gpu'`` or ``taxonomy.lables: unknown key``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, field_validator, model_validator

from cola_moderation.connectors.config import KafkaConfig, ParquetConfig
from cola_moderation.operators.config import (
    ColaConfig,
    DecodeConfig,
    DetectorConfig,
    ModelConfig,
    Section,
    TaxonomyConfig,
    registered,
)
from cola_moderation.operators.defences.registry import METHODS
from cola_moderation.operators.detector.calibration import calibrated_detector
from cola_moderation.operators.errors import ConfigError
from cola_moderation.operators.matching.banks import load_bank, resolve_path
from cola_moderation.operators.matching.config import MatchingConfig
from cola_moderation.operators.matching.signals import Hasher
from cola_moderation.operators.policy import PolicyConfig
from cola_moderation.pipeline.runtime.ray_config import RayConfig, ServeConfig, StreamConfig
from cola_moderation.resources import config_path


class PipelineConfig(Section):
    """The whole pipeline: one YAML file."""

    model: ModelConfig = ModelConfig()
    taxonomy: TaxonomyConfig
    decode: DecodeConfig = DecodeConfig()
    method: str = "cascade"
    """A registered method (:mod:`cola_moderation.operators.defences.registry`): ``clip``: plain zero-shot;
    ``cola``: COLA on every input; ``cascade``: COLA only where plain CLIP is unsure or the detector flags the
    input."""
    cola: ColaConfig = ColaConfig()
    detector: DetectorConfig = DetectorConfig()
    policy: PolicyConfig = PolicyConfig()
    matching: MatchingConfig = MatchingConfig()
    """Hash banks matched before the model (:mod:`cola_moderation.operators.matching`)."""
    kafka: KafkaConfig = KafkaConfig()
    parquet: ParquetConfig = ParquetConfig()
    ray: RayConfig = RayConfig()
    serve: ServeConfig = ServeConfig()
    stream: StreamConfig = StreamConfig()

    @field_validator("method")
    @classmethod
    def _registered_method(cls, value: str) -> str:
        return registered(value, METHODS)

    @model_validator(mode="after")
    def _policy_labels_exist(self) -> PipelineConfig:
        try:
            self.policy.check_labels(self.taxonomy.label_names)
        except ValueError as exc:
            raise ValueError(f"policy: {exc}") from None
        return self


def format_validation_error(error: ValidationError, *, source: str) -> str:
    lines = []
    for item in error.errors():
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]).lstrip(".")
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        if item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{path or '<root>'}: {message}")
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def parse_config(data: Any, *, source: str = "<dict>", base_dir: Path | None = None,
                 calibrate: bool = True) -> PipelineConfig:
    """Validate an already-parsed mapping; relative ``model.path`` values starting with ``.`` and relative
    ``parquet.image_roots`` resolve from ``base_dir``. ``calibrate``: apply the model's detector calibration
    (:mod:`cola_moderation.operators.detector.calibration`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping, got {type(data).__name__}")
    model = data.get("model")
    if base_dir is not None and isinstance(model, dict) and str(model.get("path", "")).startswith("."):
        data = {**data, "model": {**model, "path": str((base_dir / model["path"]).resolve())}}
    parquet = data.get("parquet")
    if base_dir is not None and isinstance(parquet, dict) and isinstance(parquet.get("image_roots"), list):
        roots = [str((base_dir / root).resolve()) if isinstance(root, str) and root else root
                 for root in parquet["image_roots"]]
        data = {**data, "parquet": {**parquet, "image_roots": roots}}
    taxonomy = data.get("taxonomy")
    if base_dir is not None and isinstance(taxonomy, dict) and isinstance(taxonomy.get("labels"), list):
        labels = [{**label, "examples": resolve_path(label["examples"], base_dir)}
                  if isinstance(label, dict) and isinstance(label.get("examples"), str) else label
                  for label in taxonomy["labels"]]
        data = {**data, "taxonomy": {**taxonomy, "labels": labels}}
    matching = data.get("matching")
    if base_dir is not None and isinstance(matching, dict) and isinstance(matching.get("banks"), dict):
        banks = {name: {**bank, "path": resolve_path(bank["path"], base_dir)}
                 if isinstance(bank, dict) and isinstance(bank.get("path"), str) else bank
                 for name, bank in matching["banks"].items()}
        data = {**data, "matching": {**matching, "banks": banks}}
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=source)) from None
    for name, bank in config.matching.banks.items():  # bad bank files fail here, one line naming file and row
        if load_bank(name, bank).pdq_hex:
            Hasher()  # PDQ needs the [matching] extra: say so now, not in the first worker
    if not calibrate:
        return config
    detector = calibrated_detector(config.model, config.detector, config.method)
    return config if detector is config.detector else config.model_copy(update={"detector": detector})


def load_config(path: str | Path, *, calibrate: bool = True) -> PipelineConfig:
    """Read and validate a YAML config: a file path, or the name of a bundled config (``reference``,
    ``moderation``; see :func:`cola_moderation.resources.config_path`)."""
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {file} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {file}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {file} is not valid YAML: {exc}") from None
    return parse_config(data, source=str(file), base_dir=file.parent, calibrate=calibrate)
