"""The open_clip family: ``open_clip_config.json`` + ``open_clip_model.safetensors`` (or
``open_clip_pytorch_model.bin``), as published on the hub and loaded by open_clip users as ``hf-hub:ORG/NAME`` (FARE,
TeCoA, LAION, DataComp, ...).

Mechanism: the standard ViT CLIP of open_clip is the same network as ``transformers``' ``CLIPModel`` (QuickGELU or
exact GELU, pre-LN blocks, class-token pooling with ``ln_post``, text pooled at the end-of-text token under a causal
mask), so the checkpoint's tensors are renamed onto a ``CLIPModel`` (:mod:`.open_clip_format`) and run by the code
that runs every other CLIP here. open_clip itself is not imported: it needs torchvision, which does not import beside
the CPU torch build this project pins. Parity with open_clip's own ``encode_image`` / ``encode_text`` is tested
against outputs recorded with real open_clip (``tests/operators/backbones/golden``).

The tokenizer is open_clip's default (OpenAI's CLIP BPE, lower-cased, ``context_length`` from the config); the image
size and normalisation come from ``open_clip_config.json``. Checkpoints with their own Hugging Face tokenizer, timm or
ResNet image towers, or other non-standard blocks are refused with the config key that makes them so.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, ClassVar

from cola_moderation.operators.backbones import open_clip_format as fmt
from cola_moderation.operators.backbones.base import ImageGeometry, ImageTower, resolve_device, resolve_dtype
from cola_moderation.operators.backbones.clip_vocab import clip_tokenizer
from cola_moderation.operators.backbones.sources import ModelSource, load_state_dict
from cola_moderation.operators.backbones.transformers_clip import ClipBackbone
from cola_moderation.operators.config import ModelConfig
from cola_moderation.operators.errors import ModelLoadError

log = logging.getLogger(__name__)

WEIGHT_FILES = (fmt.SAFETENSORS_NAME, "open_clip_pytorch_model.safetensors", *fmt.PICKLE_NAMES)
"""Weight file names in open_clip's order of preference (safetensors first)."""


def read_spec(source: ModelSource) -> tuple[fmt.OpenClipSpec, Path]:
    found = source.file(fmt.CONFIG_NAME)
    if found is None:
        raise source.missing(fmt.CONFIG_NAME)
    try:
        return fmt.OpenClipSpec.from_config(json.loads(found.read_text())), found
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"cannot load open_clip model {source.spec!r}: {exc}") from exc


def spec_geometry(spec: fmt.OpenClipSpec) -> ImageGeometry:
    return ImageGeometry(size=spec.image_size, mean=spec.mean, std=spec.std)


class OpenClipBackbone(ClipBackbone):
    """An open_clip ViT CLIP checkpoint, run as a ``CLIPModel``; ``logit_bias`` when the checkpoint has one."""

    family: ClassVar[str] = "open_clip"

    @classmethod
    def load(cls, config: ModelConfig, source: ModelSource | None = None) -> OpenClipBackbone:
        from transformers import CLIPConfig, CLIPModel

        source = source or ModelSource.resolve(config.path, config.revision)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        spec, _ = read_spec(source)
        weights = source.first_file(*WEIGHT_FILES)
        if weights is None:
            raise source.missing(" or ".join(WEIGHT_FILES))
        state = load_state_dict(weights)
        logit_bias = float(state["logit_bias"].float().reshape(())) if "logit_bias" in state else None
        try:
            converted = fmt.to_transformers(state)
        except ValueError as exc:
            raise ModelLoadError(f"cannot load open_clip model {config.path!r}: {exc}") from exc
        model = CLIPModel(CLIPConfig(**spec.transformers_config()))
        result = model.load_state_dict(converted, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelLoadError(f"cannot load open_clip model {config.path!r}: weights do not match "
                                 f"{fmt.CONFIG_NAME} (missing {result.missing_keys[:3]}, unexpected "
                                 f"{result.unexpected_keys[:3]})")
        log.info("loaded open_clip %s on %s as %s (image size %d, %s)", config.path, device, config.dtype,
                 spec.image_size, "QuickGELU" if spec.quick_gelu else "GELU")
        return cls(model, clip_tokenizer(max_length=spec.context_length), spec_geometry(spec), name=config.path,
                   device=device, dtype=dtype, source=source, logit_bias=logit_bias)

    def save_with_image_tower(self, tower: ImageTower, output: Path) -> None:
        """``open_clip_config.json`` copied byte for byte; ``open_clip_model.safetensors`` holds the base checkpoint's
        tensors unchanged except the image tower's (``visual.*``), cast to the dtype the base stored them in."""
        from safetensors.torch import save_file

        source = self._saved_source()
        _, config_file = read_spec(source)
        weights = source.first_file(*WEIGHT_FILES)
        if weights is None:
            raise source.missing(" or ".join(WEIGHT_FILES))
        base = load_state_dict(weights)
        trained = fmt.image_tower_to_open_clip({k: v.detach().cpu() for k, v in tower.encoder.state_dict().items()})
        missing = sorted(set(trained) ^ {k for k in base if k.startswith("visual.")})
        if missing:
            raise ModelLoadError(f"image tower does not match the base checkpoint's visual.* weights: {missing[:3]}")
        merged: dict[str, Any] = {}
        for name, tensor in base.items():
            merged[name] = (trained[name].to(tensor.dtype) if name in trained else tensor).contiguous()
        output.mkdir(parents=True, exist_ok=True)
        save_file(merged, str(output / fmt.SAFETENSORS_NAME), metadata={"format": "pt"})
        shutil.copyfile(config_file, output / fmt.CONFIG_NAME)
