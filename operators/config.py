"""Typed, frozen configuration of the operators (model, taxonomy, decoding).

Sections are pydantic models that reject unknown keys; :mod:`cola_moderation.pipeline.runtime.config` composes them with
the connector and Ray sections and turns validation failures into :class:`~cola_moderation.operators.errors.ConfigError`
messages naming the key path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_HUB_MODEL = "openai/clip-vit-base-patch32"


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def one_of(value: str, choices: Iterable[str]) -> str:
    """The message for a name that is not in a registry: ``must be one of a, b, got 'x'``."""
    return f"must be one of {', '.join(choices)}, got {value!r}"


def registered(value: str, choices: Iterable[str]) -> str:
    """``value`` when it names one of ``choices`` (a registry's keys); a ``ValueError`` for pydantic otherwise."""
    names = tuple(choices)
    if value not in names:
        raise ValueError(one_of(value, names))
    return value


class ModelConfig(Section):
    """Which CLIP checkpoint to load and where to run it."""

    path: str = DEFAULT_HUB_MODEL
    """Hub id (``openai/clip-vit-base-patch32``), a local directory, or ``builtin:reference`` for the bundled model."""
    revision: str | None = None
    device: str = "auto"
    """``auto`` (CUDA if present, else CPU; the choice is logged), ``cpu``, ``cuda`` or ``cuda:N``."""
    dtype: Literal["fp32", "fp16", "bf16", "auto"] = "fp32"
    """``auto``: bf16 on a CPU with native bf16 instructions, else fp32 (the choice is logged; see
    :mod:`cola_moderation.operators.backbones.precision`)."""
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    runtime: Literal["auto", "torch", "transformers"] = "auto"
    """How a ``transformers`` CLIP checkpoint runs: ``torch`` builds it in plain torch from its files (no
    ``transformers`` import: ~2 s less start-up per worker), ``transformers`` through ``CLIPModel``; ``auto`` takes
    ``torch`` when the checkpoint is one it covers (standard CLIP with ``tokenizer.json``), else ``transformers``, and
    logs why. Other families ignore it."""

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
    examples: str | None = None
    """Few-shot: example images of this label, as a folder, a glob (``ads/*.jpg``) or a Parquet file (column
    ``image``: bytes or paths); relative paths resolve from the config file's folder. Their mean image embedding
    (the prototype) joins the label's texts by the rule in :mod:`cola_moderation.operators.defences.fewshot`."""
    examples_weight: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Share of the prototype in the label's class vector: 0.5 weighs it as much as all its texts together; 1 lets
    the examples alone define the label (for names no text describes)."""

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
    max_concurrent_pixels: Annotated[int, Field(ge=1)] = 64_000_000
    """Per decoder (one per worker): pixels (width x height, as the headers declare) allowed to be decoding at once.
    Large images wait for each other instead of multiplying the worker's peak memory; one image over the limit still
    decodes, alone."""
    max_frames: Annotated[int, Field(ge=1, le=64)] = 8
    """Frames scored per animated GIF / WebP / APNG / AVIF or multi-page TIFF: the first, the longest-displayed, the
    last and evenly spaced ones (all when fewer). The policy takes the strictest frame. 1 = the first frame only.
    An animation whose frames x width x height exceed ``max_pixels`` is refused."""


class ViewsConfig(Section):
    """The N image views COLA scores: the original image plus ``count - 1`` seeded augmentations."""

    enabled: bool = True
    """Off: score the original image only (N = 1)."""
    count: Annotated[int, Field(ge=1, le=64)] = 5
    """N, including the original view."""
    crop_scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (0.75, 1.0)
    """Range of the crop's area as a fraction of the image (random resized crop)."""
    crop_ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.8, 1.25)
    """Range of the crop's aspect ratio (width / height)."""
    flip_probability: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Chance that an augmented view is mirrored left-right. Mirroring moves every perturbed pixel, so it undoes
    more of a perturbation than resampling alone: on the reference model 1.0 instead of 0.5 raised COLA's accuracy
    at 8/255 PGD by ~9 points at no clean cost."""
    seed: int = 0
    """Seeds the view parameters: the same image always gets the same views, whatever batch it arrives in."""

    @model_validator(mode="after")
    def _check_ranges(self) -> ViewsConfig:
        for name in ("crop_scale", "crop_ratio"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: lower bound {low} exceeds upper bound {high}")
        return self


class ProjectionConfig(Section):
    """Projection of image embeddings onto the subspace spanned by the class text embeddings."""

    enabled: bool = True
    rank: Annotated[int, Field(ge=1)] | None = None
    """C, the subspace rank (capped at the texts' numerical rank); ``None`` picks C by ``energy``."""
    energy: Annotated[float, Field(gt=0, le=1)] = 0.99
    """With ``rank: null``: the smallest C whose singular values keep this share of the squared spectrum."""
    center: bool = False
    """Subtract the mean text embedding before the SVD and project affinely around it (the paper leaves it open)."""


class TransportConfig(Section):
    """Entropic optimal transport between view and text distributions, one problem per (image, class)."""

    enabled: bool = True
    """Off: distance = view-weighted mean of ``1 - cos`` to the class-mean text embedding (plain CLIP's weights)."""
    eps: Annotated[float, Field(gt=0)] = 0.1
    """Entropic regularisation (Sinkhorn's epsilon), in units of the cost ``1 - cos``."""
    max_iter: Annotated[int, Field(ge=1)] = 100
    tol: Annotated[float, Field(gt=0)] = 1e-4
    """Convergence: largest L2 error of the view marginal over the batch (POT's stopping rule); missing it within
    ``max_iter`` is a warning and a flag, never an error."""
    method: Literal["auto", "sinkhorn", "log_sinkhorn"] = "auto"
    """``auto``: the faster scaling iterations when eps >= 0.03 (no underflow), log-domain iterations below."""
    gradient: Literal["envelope", "autodiff"] = "envelope"
    """``envelope``: d value / d cost = optimal plan (cheap); ``autodiff``: differentiate through every iteration."""


class ColaConfig(Section):
    """COLA: cross-modality alignment of N image views and M texts per class by optimal transport."""

    views: ViewsConfig = ViewsConfig()
    projection: ProjectionConfig = ProjectionConfig()
    transport: TransportConfig = TransportConfig()
    view_weighting: Literal["entropy", "uniform"] = "entropy"
    """``entropy``: a = softmax(-H_n / view_tau), H_n the entropy of view n's plain-CLIP class distribution."""
    view_tau: Annotated[float, Field(gt=0)] = 0.5
    text_weighting: Literal["entropy", "uniform"] = "entropy"
    """``entropy``: b_y = softmax(-H_ym / text_tau), H_ym the entropy when class y's logit uses text m alone."""
    text_tau: Annotated[float, Field(gt=0)] = 0.5
    temperature: Annotated[float, Field(gt=0)] | None = None
    """Confidence = softmax(-d / temperature); ``None`` = 1 / the model's logit scale, which reproduces plain CLIP's
    probabilities when views, projection and transport are all off."""
    cascade_margin: Annotated[float, Field(ge=0, le=1)] = 0.1
    """``method: cascade`` re-scores with COLA when plain CLIP's top-1 minus top-2 probability is below this. The
    reference configs set their own (0.2 and 0.3), chosen on training images by ``benchmarks/tune_cola_settings.py``;
    choose yours the same way on your model (a larger margin sends more clean images to COLA: cost)."""


class DetectorConfig(Section):
    """Adversarial-upload detector: a score in [0, 1] per image from signals the operator computes anyway.

    score = sigmoid(bias + sum of weight * (signal - center) / scale), the noise shift entering as its logarithm;
    signals without a value for an image (e.g. COLA's, where COLA did not run) are left out. The weights' defaults
    were fitted on the reference model (clean vs PGD); centres, scales and the threshold come from the model's
    calibration file when there is one (``cola calibrate``, :mod:`cola_moderation.operators.detector.calibration`).
    """

    enabled: bool = True
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
    """``suspected_adversarial`` = score >= threshold; the cascade also sends flagged images to COLA."""
    probe: bool = False
    """Encode COLA's first augmented view for every image (one extra encoder pass, reused if COLA runs) so the
    view-shift signal is available before COLA: a much stronger pre-screen for the cascade, at about half the
    throughput of plain CLIP."""
    noise_probe: bool = False
    """Encode every image a second time with a fixed, seeded uniform noise of ``noise_amplitude`` added, and use
    the embedding's shift (``noise_shift``) as a signal: a perturbation crafted against the encoder leaves the image
    where the embedding is unusually sensitive, so a little random noise moves an attacked image's embedding far
    more than a clean one's, while the same amount of random noise added beforehand does not (reference model:
    AUROC 0.96 against PGD at 8/255 and 0.94 at 4/255, vs 0.54 for random noise; the view probe: 0.92 / 0.71).
    One extra encoder pass per image, never reused by COLA."""
    noise_amplitude: Annotated[float, Field(gt=0, le=1)] = 4 / 255
    """Half-width of the uniform noise, in pixel units ([0, 1]); ``"4/255"`` is accepted."""
    noise_seed: int = 0
    """Seed of the noise pattern (one pattern per image size, the same for every image: a record's score never
    depends on which batch it arrived in). A deployment should keep its own secret seed, in the environment variable
    ``COLA_DETECTOR_SEED`` (which overrides this key) or here: an attacker who knows the pattern can craft images
    that stay quiet under exactly that noise. The seed is never logged; reports write ``"secret"``."""
    noise_shift_two_sided: bool = False
    """Count the noise probe's log shift by its distance from ``noise_shift_center`` in either direction (an image
    unusually *stable* under the noise is as suspicious as an unusually sensitive one), so an attack cannot evade the
    probe by over-stabilising the image. ``cola calibrate`` sets centre and scale from clean images."""
    noise_shift_weight: float = 2.0
    """Weight of log(1 - cos) between the embeddings with and without the probe noise (the strongest signal on the
    reference model: a logistic fit gave it ~2 against ~0.2 for the view shift and ~0.6 for the confidence drop)."""
    noise_shift_center: float = -9.3
    """In log units. Uncalibrated default: with the default bias, weight and scale the noise shift alone flags at
    center + scale / 2 = -8.8 (1 - cos = 1.5e-4), about the 95th percentile of clean Fashion-MNIST images on the
    reference model at the default amplitude (clean: median -10.4, sd 1.0). ``cola calibrate`` replaces it (and the
    scale and threshold) with the clean median measured on the deployment's own model, amplitude and dtype (bf16 on
    CPU moved the clean median from -10.5 to -10.1; ``benchmarks/gpu_check.py`` prints the median per dtype)."""
    noise_shift_scale: Annotated[float, Field(gt=0)] = 1.0
    residual_weight: float = 0.0
    """Weight of the share of the image embedding outside the text subspace. Off by default: on the reference
    model its distribution is the same for clean and PGD images (AUROC ~0.5)."""
    residual_center: float = 0.5
    residual_scale: Annotated[float, Field(gt=0)] = 0.1
    view_shift_weight: float = 1.0
    """Weight of the mean 1 - cos between the original view's embedding and the augmented views'."""
    view_shift_center: float = 0.07
    """With the default bias, weight and scale, view shift alone flags at center + scale = 0.09: about the 95th
    percentile of clean images on the reference model."""
    probe_shift_center: float = 0.04
    """The same for the probe's single view (1 - cos to view 1 alone, a smaller statistic): flags at 0.06."""
    view_shift_scale: Annotated[float, Field(gt=0)] = 0.02
    disagreement_weight: float = 0.5
    """Weight of CLIP and COLA predicting different labels (only where COLA ran)."""
    confidence_drop_weight: float = 1.0
    """Weight of CLIP's top-1 probability minus COLA's probability for that label (only where COLA ran)."""
    bias: float = -1.0
    """The score with no evidence: sigmoid(-1) = 0.27, below the default threshold."""
    calibration: str = "auto"
    """``auto``: apply ``MODEL_DIR/detector-calibration.json`` (written by ``cola calibrate``) when present and
    computed under the same settings, else warn; ``none``: use the constants above as they are; or a file path."""
    calibration_source: str | None = None
    """Set when loading applied a calibration file (which file, which images); informational."""

    @field_validator("noise_amplitude", mode="before")
    @classmethod
    def _fraction(cls, value: object) -> object:
        if isinstance(value, str) and "/" in value:
            numerator, _, denominator = value.partition("/")
            try:
                return float(numerator) / float(denominator)
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"must be a number or a fraction like 4/255, got {value!r}") from None
        return value
