"""CLIP backbone: load a ``transformers`` CLIPModel and encode image batches and texts to unit vectors.

Loading accepts a hub id (``openai/clip-vit-base-patch32``), a local directory written by ``save_pretrained``, or
``builtin:reference`` (the reference model bundled with this package). Weights are read from safetensors only and
no remote code is ever executed. Device and dtype come from config; ``auto`` is resolved once and logged.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cola_moderation import resources
from cola_moderation.operators.config import ModelConfig
from cola_moderation.operators.errors import DeviceError, ModelLoadError

log = logging.getLogger(__name__)

REFERENCE_MODEL_DIR = resources.assets_dir() / "reference-clip"
BUILTIN_PREFIX = resources.BUILTIN_PREFIX
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_model_path(path: str) -> str:
    """Map ``builtin:NAME`` to the bundled model's directory (:mod:`cola_moderation.resources`); other values pass
    through unchanged."""
    if path.startswith(BUILTIN_PREFIX):
        return str(resources.builtin_model_dir(path))
    return path


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
    if name == "fp16" and device.type == "cpu":
        raise DeviceError("model.dtype=fp16 is not supported on CPU; use fp32 or bf16")
    return DTYPES[name]


@dataclass(frozen=True)
class ImageGeometry:
    """What the checkpoint's image processor expects: square input size and normalisation constants."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_processor_config(cls, config: dict[str, Any]) -> ImageGeometry:
        crop = config.get("crop_size") or config.get("size") or {}
        if isinstance(crop, dict):
            size = crop.get("height") or crop.get("shortest_edge")
        else:
            size = crop
        if not isinstance(size, int):
            raise ModelLoadError(f"preprocessor_config.json has no usable crop_size/size: {crop!r}")
        mean_r, mean_g, mean_b = (float(v) for v in config.get("image_mean", (0.48145466, 0.4578275, 0.40821073)))
        std_r, std_g, std_b = (float(v) for v in config.get("image_std", (0.26862954, 0.26130258, 0.27577711)))
        mean, std = (mean_r, mean_g, mean_b), (std_r, std_g, std_b)
        return cls(size=size, mean=mean, std=std)


def _load_error(config: ModelConfig, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load CLIP model {config.path!r}: {' '.join(str(exc).split())}. A hub id needs network access or a "
        "populated Hugging Face cache (set HF_HUB_OFFLINE=1 to use the cache only); a directory must hold "
        "model.safetensors, config.json, the tokenizer files and preprocessor_config.json"
    )


def load_geometry(config: ModelConfig) -> ImageGeometry:
    """Read only the checkpoint's ``preprocessor_config.json`` (no weights): what decoders must produce."""
    from transformers.utils import cached_file

    path = resolve_model_path(config.path)
    hub_kwargs: dict[str, Any] = {"revision": config.revision} if config.revision else {}
    try:
        processor_file = cached_file(path, "preprocessor_config.json", **hub_kwargs)
        if processor_file is None:
            raise OSError(f"{path} has no preprocessor_config.json")
        return ImageGeometry.from_processor_config(json.loads(Path(processor_file).read_text()))
    except (OSError, ValueError) as exc:
        raise _load_error(config, exc) from exc


class ClipBackbone:
    """A loaded CLIP model with its tokenizer and image geometry, on one device.

    ``encode_images`` takes pixels in [0, 1] (``[B, 3, size, size]``) and normalises them itself, so attacks and
    augmentations operate in pixel space.
    """

    def __init__(self, model: Any, tokenizer: Any, geometry: ImageGeometry, *, name: str, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.geometry = geometry
        self.name = name
        self.device = device
        self.dtype = dtype
        self._mean = torch.tensor(geometry.mean, device=device, dtype=dtype).view(1, 3, 1, 1)
        self._std = torch.tensor(geometry.std, device=device, dtype=dtype).view(1, 3, 1, 1)
        self.logit_scale = float(model.logit_scale.exp().item())
        self.embed_dim = int(model.config.projection_dim)

    @classmethod
    def load(cls, config: ModelConfig) -> ClipBackbone:
        from transformers import CLIPModel, CLIPTokenizer

        path = resolve_model_path(config.path)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        hub_kwargs: dict[str, Any] = {"revision": config.revision} if config.revision else {}
        geometry = load_geometry(config)
        try:
            tokenizer = CLIPTokenizer.from_pretrained(path, **hub_kwargs)
            model = CLIPModel.from_pretrained(path, use_safetensors=True, dtype=dtype, **hub_kwargs)
        except (OSError, ValueError) as exc:
            raise _load_error(config, exc) from exc
        log.info("loaded %s on %s as %s (image size %d)", config.path, device, config.dtype, geometry.size)
        return cls(model, tokenizer, geometry, name=config.path, device=device, dtype=dtype)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.to(device=self.device, dtype=self.dtype) - self._mean) / self._std

    def encode_images(self, pixels: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """``[B, 3, size, size]`` pixels in [0, 1] -> ``[B, d]`` unit-norm float32 embeddings.

        With ``grad=True`` the computation is recorded so gradients reach ``pixels`` (used by attacks).
        """
        with nullcontext() if grad else torch.inference_mode():
            outputs = self.model.vision_model(pixel_values=self.normalize(pixels))
            features = self.model.visual_projection(outputs.pooler_output).float()
            return torch.nn.functional.normalize(features, dim=-1)

    def encode_texts(self, texts: list[str], *, batch_size: int = 256) -> torch.Tensor:
        """Texts -> ``[T, d]`` unit-norm float32 embeddings."""
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                                        return_tensors="pt").to(self.device)
                outputs = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                chunks.append(self.model.text_projection(outputs.pooler_output).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)
