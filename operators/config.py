"""Typed, frozen configuration of the operators (model, taxonomy, decoding).

Sections are pydantic models that reject unknown keys; :mod:`pipeline.config` composes them with the connector and
Ray sections and turns validation failures into :class:`~operators.errors.ConfigError` messages naming the key path.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_HUB_MODEL = "openai/clip-vit-base-patch32"


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(Section):
    """Which CLIP checkpoint to load and where to run it."""

    path: str = DEFAULT_HUB_MODEL
    """Hub id (``openai/clip-vit-base-patch32``), a local directory, or ``builtin:reference`` for the bundled model."""
    revision: str | None = None
    device: str = "auto"
    """``auto`` (CUDA if present, else CPU; the choice is logged), ``cpu``, ``cuda`` or ``cuda:N``."""
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value


class LabelConfig(Section):
    """One class of the taxonomy."""

    name: Annotated[str, Field(min_length=1)]
    """The label written to output records."""
    synonyms: tuple[str, ...] = ()
    """Phrases substituted into each prompt template; defaults to the name itself."""
    descriptions: tuple[str, ...] = ()
    """Whole sentences used as-is (not templated), e.g. LLM-written class descriptions."""

    def phrases(self) -> tuple[str, ...]:
        return self.synonyms or (self.name.replace("_", " "),)


def _coerce_label(value: object) -> object:
    return {"name": value} if isinstance(value, str) else value


class TaxonomyConfig(Section):
    """Labels and the prompt templates that turn them into texts."""

    labels: tuple[Annotated[LabelConfig, Field()], ...]
    templates: tuple[str, ...] = ("a photo of {}.",)
    top_k: Annotated[int, Field(ge=1)] = 5

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_from_strings(cls, value: object) -> object:
        if isinstance(value, (list, tuple)):
            return [_coerce_label(item) for item in value]
        return value

    @field_validator("templates")
    @classmethod
    def _check_templates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one template is required")
        for template in value:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain exactly one '{{}}' placeholder")
        return value

    @model_validator(mode="after")
    def _check_labels(self) -> TaxonomyConfig:
        names = [label.name for label in self.labels]
        if len(names) < 2:
            raise ValueError("labels: at least two labels are required for classification")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"labels: duplicate label names {duplicates}")
        return self

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)


class DecodeConfig(Section):
    """Limits and speed knobs of image decoding."""

    max_pixels: Annotated[int, Field(ge=1)] = 64_000_000
    """Images whose header declares more pixels are refused before any pixel is allocated."""
    max_bytes: Annotated[int, Field(ge=1)] = 32 * 1024 * 1024
    draft: bool = True
    """Let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding when the target size allows."""
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    """Threads decoding a batch in parallel (Pillow releases the GIL while decoding and resizing)."""
