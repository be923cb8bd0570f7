"""The backbone interface: what every image/text encoder family offers the rest of the system.

COLA, the detector, the attacks, evaluation, calibration, fine-tuning, the Serve app and the jobs see only
:class:`Backbone`; one module per family (``transformers_clip``, ``openclip``, ``siglip``) implements it and is the
only code that touches that family's model classes. :func:`cola_moderation.operators.backbones.load_backbone` picks
the family from the checkpoint's files.

Pixels in, unit vectors out: ``encode_images`` takes ``[B, 3, S, S]`` pixels in [0, 1] and applies the model's own
normalisation inside (:class:`PixelNormalize`), so attacks and augmentations work in pixel space for every family.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from cola_moderation.operators.errors import DeviceError, ModelLoadError

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""OpenAI CLIP's per-channel pixel mean (also open_clip's default ``preprocess_cfg.mean``)."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
Scoring = Literal["softmax", "sigmoid"]


def resolve_device(requested: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device, failing clearly when CUDA is asked for but absent."""
    if requested == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        log.info("model.device=auto resolved to %s", device)
        return device
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"model.device={requested!r} but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"model.device={requested!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``fp32|fp16|bf16|auto`` on ``device`` (``auto``: :func:`.precision.auto_dtype`, logged)."""
    if name == "auto":
        from cola_moderation.operators.backbones.precision import auto_dtype

        name = auto_dtype(device)
    if name == "fp16" and device.type == "cpu":
        raise DeviceError("model.dtype=fp16 is not supported on CPU; use fp32 or bf16")
    if name not in DTYPES:
        raise DeviceError(f"model.dtype={name!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class ImageGeometry:
    """What the checkpoint's image preprocessing expects: square input size and normalisation constants."""

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def from_processor_config(cls, config: dict[str, Any]) -> ImageGeometry:
        """From a ``transformers`` ``preprocessor_config.json`` (CLIP: ``crop_size``; SigLIP: ``size``)."""
        crop = config.get("crop_size") or config.get("size") or {}
        size = (crop.get("height") or crop.get("shortest_edge")) if isinstance(crop, dict) else crop
        if not isinstance(size, int):
            raise ModelLoadError(f"preprocessor_config.json has no usable crop_size/size: {crop!r}")
        return cls(size=size, mean=_triple(config.get("image_mean", CLIP_MEAN), "image_mean"),
                   std=_triple(config.get("image_std", CLIP_STD), "image_std"))


def _triple(values: Any, name: str) -> tuple[float, float, float]:
    try:
        red, green, blue = (float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{name} must be three numbers, got {values!r}") from exc
    return red, green, blue


class PixelNormalize(torch.nn.Module):
    """``(pixels - mean) / std`` per channel: the one place pixels in [0, 1] become model inputs."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, geometry: ImageGeometry) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(geometry.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(geometry.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


class ImageTower(torch.nn.Module):
    """A family's image encoder as one module: ``[B, 3, S, S]`` pixels in [0, 1] -> projected, unnormalised
    ``[B, d]`` float32 features. ``encoder`` is the family's own module (what fine-tuning trains and saving reads)."""

    def __init__(self, encoder: torch.nn.Module, geometry: ImageGeometry) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = PixelNormalize(geometry)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.normalize(pixels)).float()


class Backbone(ABC):
    """A loaded dual encoder (image tower, text tower, tokenizer, scores) on one device.

    Attributes: ``name`` (as configured), ``family``, ``device``, ``dtype``, ``geometry``, ``embed_dim``,
    ``logit_scale`` (already exponentiated: ``logits = logit_scale * cos``), ``logit_bias`` (``None`` unless the
    family scores with a sigmoid: then ``p = sigmoid(logit_scale * cos + logit_bias)``) and ``scoring``.
    """

    family: ClassVar[str]
    scoring: ClassVar[Scoring] = "softmax"

    def __init__(self, image_tower: ImageTower, *, name: str, geometry: ImageGeometry, device: torch.device,
                 dtype: torch.dtype, embed_dim: int, logit_scale: float, logit_bias: float | None = None) -> None:
        self.image_tower = image_tower.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.name = name
        self.geometry = geometry
        self.device = device
        self.dtype = dtype
        self.embed_dim = embed_dim
        self.logit_scale = logit_scale
        self.logit_bias = logit_bias

    def encode_images(self, pixels: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """``[B, 3, size, size]`` pixels in [0, 1] -> ``[B, d]`` unit-norm float32 embeddings.

        With ``grad=True`` the computation is recorded so gradients reach ``pixels`` (used by attacks)."""
        with nullcontext() if grad else torch.inference_mode():
            features = self.image_tower(pixels.to(device=self.device, dtype=self.dtype))
            return torch.nn.functional.normalize(features, dim=-1)

    @abstractmethod
    def encode_texts(self, texts: list[str], *, batch_size: int = 256) -> torch.Tensor:
        """Texts -> ``[T, d]`` unit-norm float32 embeddings (tokenised with the model's own tokenizer)."""

    def trainable_image_tower(self) -> ImageTower:
        """A float32 copy of the image tower with gradients on, for ``cola finetune``; the loaded one is untouched."""
        return copy.deepcopy(self.image_tower).float().requires_grad_(True)

    @abstractmethod
    def save_with_image_tower(self, tower: ImageTower, output: Path) -> None:
        """Write a checkpoint of this family's format to ``output``: ``tower``'s weights as the image tower (cast to
        the base checkpoint's dtype), everything else (text tower, logit scale, tokenizer and config files) copied
        unchanged from the base checkpoint. ``model.path: output`` loads it back."""

    def describe(self) -> dict[str, Any]:
        """What reports record about the model."""
        described: dict[str, Any] = {"path": self.name, "family": self.family, "device": str(self.device),
                                     "dtype": str(self.dtype).removeprefix("torch."), "image_size": self.geometry.size,
                                     "embed_dim": self.embed_dim, "logit_scale": round(self.logit_scale, 4)}
        if self.logit_bias is not None:
            described["logit_bias"] = round(self.logit_bias, 4)
        return described
