"""Build, train and save CLIP checkpoints in the standard ``transformers`` layout.

Used for the offline test model (tiny, random weights), the ViT-B/32-shaped benchmark model and the reference
model (:class:`TrainableClip`: what reference training needs of a CLIP, without touching transformers outside this
package). Everything written here loads back through
:func:`cola_moderation.operators.backbones.registry.load_backbone`, the same path a hub checkpoint takes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cola_moderation.operators.backbones.base import CLIP_MEAN, CLIP_STD, ImageGeometry, PixelNormalize
from cola_moderation.operators.backbones.clip_vocab import clip_tokenizer


@dataclass(frozen=True)
class ClipShape:
    """Architecture knobs of a CLIP dual encoder."""

    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    projection_dim: int = 512
    context_length: int = 77

    def to_config(self) -> Any:
        from transformers import CLIPConfig

        return CLIPConfig(
            text_config={
                "hidden_size": self.text_width, "intermediate_size": 4 * self.text_width,
                "num_hidden_layers": self.text_layers, "num_attention_heads": self.text_heads,
                "max_position_embeddings": self.context_length, "vocab_size": 49408,
                "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
                "projection_dim": self.projection_dim,
            },
            vision_config={
                "hidden_size": self.vision_width, "intermediate_size": 4 * self.vision_width,
                "num_hidden_layers": self.vision_layers, "num_attention_heads": self.vision_heads,
                "image_size": self.image_size, "patch_size": self.patch_size,
                "projection_dim": self.projection_dim,
            },
            projection_dim=self.projection_dim,
        )


VIT_B_32 = ClipShape()
TINY = ClipShape(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2, text_width=32,
                 text_layers=2, text_heads=2, projection_dim=16)


def new_clip_model(shape: ClipShape, *, seed: int = 0) -> Any:
    from transformers import CLIPModel

    torch.manual_seed(seed)
    return CLIPModel(shape.to_config())


def save_checkpoint(model: Any, directory: Path, *, image_size: int, mean: tuple[float, float, float] = CLIP_MEAN,
                    std: tuple[float, float, float] = CLIP_STD, dtype: torch.dtype | None = None) -> Path:
    """Save ``model`` with the CLIP tokenizer and image processor files (safetensors) into ``directory``."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    directory.mkdir(parents=True, exist_ok=True)
    clip_tokenizer(max_length=model.config.text_config.max_position_embeddings).save_pretrained(directory)
    processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                      crop_size={"height": image_size, "width": image_size},
                                      image_mean=list(mean), image_std=list(std))
    processor.save_pretrained(directory)
    to_save = model if dtype is None else model.to(dtype)
    to_save.save_pretrained(directory, safe_serialization=True)
    return directory


class TrainableClip(torch.nn.Module):
    """A fresh ``CLIPModel`` of ``shape`` (seeded), trained from scratch through the few calls training needs:
    unit-norm image and text features, the logit scale, the token embedding (for a sparse optimiser), an in-memory
    :class:`~cola_moderation.operators.backbones.base.Backbone` of a copy, and saving."""

    def __init__(self, shape: ClipShape, *, seed: int = 0) -> None:
        super().__init__()
        self.shape = shape
        self.model = new_clip_model(shape, seed=seed)
        self.normalize = PixelNormalize(ImageGeometry(size=shape.image_size))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` pixels in [0, 1] -> ``[B, d]`` unit-norm features (with gradients)."""
        vision = self.model.vision_model(pixel_values=self.normalize(pixels))
        return F.normalize(self.model.visual_projection(vision.pooler_output), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask ``[T, L]`` -> ``[T, d]`` unit-norm features (with gradients)."""
        text = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(self.model.text_projection(text.pooler_output), dim=-1)

    @property
    def log_logit_scale(self) -> torch.nn.Parameter:
        """The learnable ``log`` of the logit scale."""
        return self.model.logit_scale

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        return self.model.text_model.embeddings.token_embedding

    def backbone(self, *, device: str = "cpu") -> Any:
        """A :class:`~cola_moderation.operators.backbones.transformers_clip.ClipBackbone` of a copy (evaluation
        during or right after training; not saveable)."""
        from cola_moderation.operators.backbones.transformers_clip import ClipBackbone

        return ClipBackbone(copy.deepcopy(self.model), clip_tokenizer(max_length=self.shape.context_length),
                            ImageGeometry(size=self.shape.image_size), name="in-memory", device=torch.device(device),
                            dtype=torch.float32)

    def save(self, directory: Path, *, dtype: torch.dtype | None = torch.float16) -> Path:
        """Write a copy (cast to ``dtype``) with the tokenizer and processor files."""
        return save_checkpoint(copy.deepcopy(self.model).cpu(), directory, image_size=self.shape.image_size,
                               dtype=dtype)
