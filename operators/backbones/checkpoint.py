"""Build, train and save CLIP checkpoints in the standard ``transformers`` layout.

Used for the offline test model (tiny, random weights), the ViT-B/32-shaped benchmark model and the reference
model (:class:`TrainableClip`: what reference training needs of a CLIP, without touching transformers outside this
package). Everything written here loads back through
:func:`cola_moderation.operators.backbones.registry.load_backbone`, the same path a hub checkpoint takes.
"""

from __future__ import annotations

import copy
import math
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


OPEN_CLIP_VIT_B_32: dict[str, Any] = {
    "embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}
"""open_clip's ``ViT-B-32`` architecture (``model_cfg`` of ``open_clip_config.json``)."""
OPEN_CLIP_TINY: dict[str, Any] = {
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def save_open_clip_checkpoint(directory: Path, model_cfg: dict[str, Any], *, seed: int = 0,
                              preprocess: dict[str, Any] | None = None, pickle: bool = False) -> Path:
    """A random-weight checkpoint in open_clip's own layout (``open_clip_config.json`` + safetensors, or the
    ``.bin`` that ``torch.save`` writes with ``pickle=True``), with the weights of
    :func:`~cola_moderation.operators.backbones.open_clip_format.random_state_dict`."""
    from cola_moderation.operators.backbones import open_clip_format as fmt

    config = fmt.model_config(model_cfg)
    config["preprocess_cfg"].update(preprocess or {})
    spec = fmt.OpenClipSpec.from_config(config)
    return fmt.write_checkpoint(directory, config, fmt.random_state_dict(spec, seed=seed), pickle=pickle)


@dataclass(frozen=True)
class SiglipShape:
    """Architecture knobs of a SigLIP dual encoder (the image tower ends in SigLIP's attention-pooling head)."""

    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    context_length: int = 64


SIGLIP_VIT_B_32 = SiglipShape()
SIGLIP_TINY = SiglipShape(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
                          text_width=32, text_layers=2, text_heads=2, context_length=16)
TOKENIZER_CORPUS = (
    "a photo of a {}.", "a picture of the {}.", "an image showing {}.", "this is {}.", "a close-up of a {}.",
)
TOKENIZER_WORDS = ("cat", "dog", "car", "tree", "safe", "nudity", "violence", "weapons", "hate symbols", "drugs",
                   "red", "blurry", "drawing", "person", "street", "food", "text", "logo", "gun", "knife")


def siglip_tokenizer(directory: Path, *, max_length: int, vocab_size: int = 96) -> Any:
    """A real ``SiglipTokenizer`` over a small sentencepiece model trained here on a tiny English corpus (offline
    stand-in for SigLIP's 32k vocabulary: same code path, fewer pieces). Writes ``spiece.model`` to ``directory``."""
    import io

    import sentencepiece as spm
    from transformers import SiglipTokenizer

    sentences = [template.format(word) for template in TOKENIZER_CORPUS for word in TOKENIZER_WORDS]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spiece.model").write_bytes(model.getvalue())
    return SiglipTokenizer(vocab_file=str(directory / "spiece.model"), model_max_length=max_length)


def save_siglip_checkpoint(directory: Path, shape: SiglipShape, *, seed: int = 0, logit_scale: float = 10.0,
                           logit_bias: float = -1.0, dtype: torch.dtype | None = None) -> Path:
    """A random-weight ``SiglipModel`` with its tokenizer and image-processor files, as ``save_pretrained`` writes
    them (safetensors). The logit scale and bias default to values that give random embeddings sigmoid scores
    between about 0.1 and 0.5 (trained SigLIPs have about 118 and -16)."""
    import json

    from transformers import SiglipConfig, SiglipModel

    tokenizer = siglip_tokenizer(directory, max_length=shape.context_length)
    tokenizer.save_pretrained(directory)
    config = SiglipConfig(
        text_config={"hidden_size": shape.text_width, "intermediate_size": 4 * shape.text_width,
                     "num_hidden_layers": shape.text_layers, "num_attention_heads": shape.text_heads,
                     "max_position_embeddings": shape.context_length, "vocab_size": len(tokenizer),
                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "bos_token_id": None, "projection_size": shape.text_width},
        vision_config={"hidden_size": shape.vision_width, "intermediate_size": 4 * shape.vision_width,
                       "num_hidden_layers": shape.vision_layers, "num_attention_heads": shape.vision_heads,
                       "image_size": shape.image_size, "patch_size": shape.patch_size},
    )
    torch.manual_seed(seed)
    model: Any = SiglipModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
        model.logit_bias.fill_(logit_bias)
    if dtype is not None:
        model.to(dtype=dtype)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "size": {"height": shape.image_size, "width": shape.image_size},
    }, indent=2) + "\n")
    return directory
