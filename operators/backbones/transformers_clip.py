"""The ``transformers`` CLIP family: ``CLIPModel`` checkpoints (``config.json`` with ``model_type: clip``).

Loading accepts a hub id (``openai/clip-vit-base-patch32``), a local directory written by ``save_pretrained``, or
``builtin:reference`` (the reference model bundled with this package). Weights are read from safetensors only and
no remote code is ever executed. open_clip checkpoints run on the same architecture (:mod:`.openclip`).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from cola_moderation.operators.backbones.base import (
    Backbone,
    ImageGeometry,
    ImageTower,
    resolve_device,
    resolve_dtype,
)
from cola_moderation.operators.backbones.sources import ModelSource
from cola_moderation.operators.config import ModelConfig
from cola_moderation.operators.errors import ModelLoadError

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "spiece.model", "tokenizer.model", "added_tokens.json")
"""Tokenizer files a checkpoint may have; fine-tuned checkpoints get the base's copies byte for byte."""
PROCESSOR_FILE = "preprocessor_config.json"
COPIED_FILES = (*TOKENIZER_FILES, PROCESSOR_FILE, "config.json")
"""Files a fine-tuned checkpoint copies from its base byte for byte (those the base has)."""
IMAGE_TOWER_PREFIXES = ("vision_model.", "visual_projection.")
"""``CLIPModel`` weights of the image tower (what fine-tuning changes); everything else is written back unchanged."""


def _load_error(config: ModelConfig, exc: BaseException, *, needs: str) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load model {config.path!r}: {' '.join(str(exc).split())}. A hub id needs network access or a "
        f"populated Hugging Face cache (set HF_HUB_OFFLINE=1 to use the cache only); a directory must hold {needs}"
    )


def processor_geometry(source: ModelSource) -> ImageGeometry:
    """Read only ``preprocessor_config.json`` (no weights): what decoders must produce."""
    found = source.file(PROCESSOR_FILE)
    if found is None:
        raise source.missing(PROCESSOR_FILE)
    try:
        return ImageGeometry.from_processor_config(json.loads(found.read_text()))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {found}: {exc}") from exc


@dataclass(frozen=True)
class HubLoad:
    """What loading a ``transformers`` checkpoint (CLIP or SigLIP) needs before any weights are read: where it is,
    the device and dtype the config asks for, the image geometry and the hub keyword arguments."""

    source: ModelSource
    device: torch.device
    dtype: torch.dtype
    geometry: ImageGeometry
    hub_kwargs: dict[str, Any]

    @classmethod
    def plan(cls, config: ModelConfig, source: ModelSource | None = None) -> HubLoad:
        source = source or ModelSource.resolve(config.path, config.revision)
        device = resolve_device(config.device)
        return cls(source=source, device=device, dtype=resolve_dtype(config.dtype, device),
                   geometry=processor_geometry(source),
                   hub_kwargs={"revision": source.revision} if source.revision else {})


class ClipImageEncoder(torch.nn.Module):
    """``CLIPModel``'s image side: normalised pixels -> projected (unnormalised) features."""

    def __init__(self, vision_model: torch.nn.Module, visual_projection: torch.nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)


class ClipBackbone(Backbone):
    """A ``transformers`` ``CLIPModel`` with its tokenizer. ``model`` is this family's own object: code outside the
    backbone modules goes through the :class:`Backbone` interface instead."""

    family: ClassVar[str] = "clip"

    def __init__(self, model: Any, tokenizer: Any, geometry: ImageGeometry, *, name: str, device: torch.device,
                 dtype: torch.dtype, source: ModelSource | None = None, logit_bias: float | None = None) -> None:
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.source = source
        super().__init__(ImageTower(ClipImageEncoder(self.model.vision_model, self.model.visual_projection), geometry),
                         name=name, geometry=geometry, device=device, dtype=dtype,
                         embed_dim=int(model.config.projection_dim),
                         logit_scale=float(model.logit_scale.float().exp().item()), logit_bias=logit_bias)

    @classmethod
    def load(cls, config: ModelConfig, source: ModelSource | None = None) -> ClipBackbone:
        from transformers import CLIPModel, CLIPTokenizer

        load = HubLoad.plan(config, source)
        try:
            tokenizer = CLIPTokenizer.from_pretrained(load.source.location, **load.hub_kwargs)
            model = CLIPModel.from_pretrained(load.source.location, use_safetensors=True, dtype=load.dtype,
                                              **load.hub_kwargs)
        except (OSError, ValueError) as exc:
            raise _load_error(config, exc, needs="model.safetensors, config.json, the tokenizer files and "
                                                 "preprocessor_config.json") from exc
        log.info("loaded %s on %s as %s (image size %d)", config.path, load.device, config.dtype, load.geometry.size)
        return cls(model, tokenizer, load.geometry, name=config.path, device=load.device, dtype=load.dtype,
                   source=load.source)

    def encode_texts(self, texts: list[str], *, batch_size: int = 256) -> torch.Tensor:
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                                        return_tensors="pt").to(self.device)
                outputs = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                chunks.append(self.model.text_projection(outputs.pooler_output).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    def model_with_image_tower(self, tower: ImageTower, dtype: torch.dtype) -> Any:
        """A CPU copy of the whole model in ``dtype`` whose image side holds ``tower``'s weights."""
        model = copy.deepcopy(self.model).to("cpu")
        encoder = ClipImageEncoder(model.vision_model, model.visual_projection)
        encoder.load_state_dict({k: v.detach().cpu() for k, v in tower.encoder.state_dict().items()})
        return model.to(dtype)

    def save_with_image_tower(self, tower: ImageTower, output: Path) -> None:
        source = self._saved_source()
        output.mkdir(parents=True, exist_ok=True)
        self.model_with_image_tower(tower, stored_dtype(source.file("model.safetensors"))).save_pretrained(
            output, safe_serialization=True)
        copy_files(source, output, COPIED_FILES)

    def _saved_source(self) -> ModelSource:
        if self.source is None:
            raise ModelLoadError(f"{self.name}: an in-memory model has no base checkpoint to save beside")
        return self.source


def stored_dtype(weights: Path | None) -> torch.dtype:
    """The dtype a safetensors file stores its (first) tensor in; float32 when unknown."""
    if weights is None or weights.suffix != ".safetensors":
        return torch.float32
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        keys = list(handle.keys())
        stored = str(handle.get_slice(keys[0]).get_dtype()) if keys else "F32"
    return {"F16": torch.float16, "BF16": torch.bfloat16}.get(stored, torch.float32)


def copy_files(source: ModelSource, output: Path, names: tuple[str, ...]) -> None:
    """Copy those of ``names`` that the checkpoint has into ``output``, byte for byte."""
    for name in names:
        found = source.file(name)
        if found is not None:
            shutil.copyfile(found, output / name)
