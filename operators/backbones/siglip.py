"""The SigLIP family: ``transformers`` ``SiglipModel`` checkpoints (``config.json`` with ``model_type: siglip``:
SigLIP, and the fixed-resolution SigLIP 2 checkpoints, which share the architecture).

SigLIP was trained with a sigmoid loss: a class's probability is ``sigmoid(logit_scale * cos + logit_bias)`` on its
own, not a softmax over the classes (so scores do not sum to 1 and each label's threshold means "how likely is this
label", independently of the others). Texts are padded to the full ``max_position_embeddings`` as in training
(the text tower pools the last position). The image processor squashes images to ``size`` x ``size`` where this
project's decoder resizes the shortest side and centre-crops: for square uploads the two agree.
The tokenizer is the checkpoint's own (SigLIP: sentencepiece, ``pip install sentencepiece``; SigLIP 2: Gemma's
``tokenizer.json``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, ClassVar

import torch

from cola_moderation.operators.backbones.base import Backbone, ImageGeometry, ImageTower
from cola_moderation.operators.backbones.sources import ModelSource
from cola_moderation.operators.backbones.transformers_clip import (
    COPIED_FILES,
    HubLoad,
    copy_files,
    stored_dtype,
)
from cola_moderation.operators.config import ModelConfig
from cola_moderation.operators.errors import MissingDependencyError, ModelLoadError

log = logging.getLogger(__name__)


class SiglipImageEncoder(torch.nn.Module):
    """``SiglipModel``'s image side (its attention-pooling head included): normalised pixels -> features."""

    def __init__(self, vision_model: torch.nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=pixel_values).pooler_output


class SiglipBackbone(Backbone):
    family: ClassVar[str] = "siglip"

    def __init__(self, model: Any, tokenizer: Any, geometry: ImageGeometry, *, name: str, device: torch.device,
                 dtype: torch.dtype, source: ModelSource | None = None) -> None:
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.source = source
        self.max_length = int(model.config.text_config.max_position_embeddings)
        super().__init__(ImageTower(SiglipImageEncoder(self.model.vision_model), geometry), name=name,
                         geometry=geometry, device=device, dtype=dtype,
                         embed_dim=int(model.config.text_config.projection_size),
                         logit_scale=float(model.logit_scale.float().exp().item()),
                         logit_bias=float(model.logit_bias.float().item()))

    @classmethod
    def load(cls, config: ModelConfig, source: ModelSource | None = None) -> SiglipBackbone:
        from transformers import AutoTokenizer, SiglipModel

        load = HubLoad.plan(config, source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(load.source.location, trust_remote_code=False, **load.hub_kwargs)
            model = SiglipModel.from_pretrained(load.source.location, use_safetensors=True, dtype=load.dtype,
                                                **load.hub_kwargs)
        except ImportError as exc:
            raise MissingDependencyError(f"SigLIP's tokenizer needs sentencepiece: pip install sentencepiece "
                                         f"({' '.join(str(exc).split())[:200]})") from exc
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load SigLIP model {config.path!r}: {' '.join(str(exc).split())}") from exc
        log.info("loaded SigLIP %s on %s as %s (image size %d)", config.path, load.device, config.dtype,
                 load.geometry.size)
        return cls(model, tokenizer, load.geometry, name=config.path, device=load.device, dtype=load.dtype,
                   source=load.source)

    def encode_texts(self, texts: list[str], *, batch_size: int = 256) -> torch.Tensor:
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(texts[start : start + batch_size], padding="max_length", truncation=True,
                                        max_length=self.max_length, return_tensors="pt").to(self.device)
                chunks.append(self.model.text_model(input_ids=tokens["input_ids"]).pooler_output.float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    def save_with_image_tower(self, tower: ImageTower, output: Path) -> None:
        if self.source is None:
            raise ModelLoadError(f"{self.name}: an in-memory model has no base checkpoint to save beside")
        model = copy.deepcopy(self.model).to("cpu")
        SiglipImageEncoder(model.vision_model).load_state_dict(
            {k: v.detach().cpu() for k, v in tower.encoder.state_dict().items()})
        output.mkdir(parents=True, exist_ok=True)
        model.to(stored_dtype(self.source.file("model.safetensors"))).save_pretrained(output, safe_serialization=True)
        copy_files(self.source, output, COPIED_FILES)

