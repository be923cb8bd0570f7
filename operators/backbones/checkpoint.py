"""Build and save CLIP checkpoints in the standard ``transformers`` layout.

Used for the offline test model (tiny, random weights), the ViT-B/32-shaped benchmark model and the reference
model. Everything written here loads back through
:meth:`cola_moderation.operators.backbones.transformers_clip.ClipBackbone.load`, the same path a hub
checkpoint takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cola_moderation.operators.backbones.clip_vocab import clip_tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
