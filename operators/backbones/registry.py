"""The backbone families and how a checkpoint's files choose one.

=============  ==============================================  ==============================================
family         files that select it                            module
=============  ==============================================  ==============================================
``open_clip``  ``open_clip_config.json`` (+ weights)           :mod:`.openclip` (run as a ``CLIPModel``)
``clip``       ``config.json`` with ``model_type: clip``       :mod:`.clip_torch` or :mod:`.transformers_clip`
``siglip``     ``config.json`` with ``model_type: siglip``     :mod:`.siglip`
=============  ==============================================  ==============================================

``clip`` has two runtimes (``model.runtime``): plain torch where it covers the checkpoint, ``transformers`` always.

A new family is one module implementing :class:`~.base.Backbone` plus one row in :data:`FAMILIES`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from cola_moderation.operators.backbones import open_clip_format
from cola_moderation.operators.backbones.base import Backbone, ImageGeometry
from cola_moderation.operators.backbones.sources import ModelSource
from cola_moderation.operators.config import ModelConfig
from cola_moderation.operators.errors import ModelLoadError

log = logging.getLogger(__name__)


def _load_clip(config: ModelConfig, source: ModelSource) -> Backbone:
    """``model.runtime``: plain torch (:mod:`.clip_torch`) where it covers the checkpoint, else ``transformers``."""
    from cola_moderation.operators.backbones.transformers_clip import ClipBackbone, HubLoad

    if config.runtime != "transformers":
        from cola_moderation.operators.backbones import clip_torch

        spec = clip_torch.plan(source)
        if not isinstance(spec, str):
            return clip_torch.TorchClipBackbone.load(config, HubLoad.plan(config, source), spec)
        if config.runtime == "torch":
            raise ModelLoadError(f"model.runtime=torch cannot run {config.path!r}: {spec}; use runtime: auto or "
                                 "transformers")
        log.info("model %s runs through transformers (model.runtime=auto): %s", config.path, spec)
    return ClipBackbone.load(config, source)


def _load_open_clip(config: ModelConfig, source: ModelSource) -> Backbone:
    from cola_moderation.operators.backbones.openclip import OpenClipBackbone

    return OpenClipBackbone.load(config, source)


def _load_siglip(config: ModelConfig, source: ModelSource) -> Backbone:
    from cola_moderation.operators.backbones.siglip import SiglipBackbone

    return SiglipBackbone.load(config, source)


def _clip_geometry(source: ModelSource) -> ImageGeometry:
    from cola_moderation.operators.backbones.transformers_clip import processor_geometry

    return processor_geometry(source)


def _open_clip_geometry(source: ModelSource) -> ImageGeometry:
    from cola_moderation.operators.backbones.openclip import read_spec, spec_geometry

    return spec_geometry(read_spec(source)[0])


FAMILIES: dict[str, tuple[Callable[[ModelConfig, ModelSource], Backbone], Callable[[ModelSource], ImageGeometry]]] = {
    "clip": (_load_clip, _clip_geometry),
    "open_clip": (_load_open_clip, _open_clip_geometry),
    "siglip": (_load_siglip, _clip_geometry),
}
"""family -> (loader, geometry reader: the image size and normalisation, from config files only)."""
MODEL_TYPES = {"clip": "clip", "siglip": "siglip"}
"""``config.json`` ``model_type`` -> family."""


def detect_family(source: ModelSource) -> str:
    """Which family ``source`` holds, from its config files (no weights are read)."""
    if source.file(open_clip_format.CONFIG_NAME) is not None:
        return "open_clip"
    found = source.file("config.json")
    if found is None:
        raise source.missing(f"{open_clip_format.CONFIG_NAME} (open_clip) or config.json (transformers)")
    try:
        model_type = json.loads(found.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"cannot read {found}: {exc}") from exc
    if model_type not in MODEL_TYPES:
        raise ModelLoadError(f"model {source.spec!r}: config.json model_type={model_type!r} is not supported "
                             f"(supported: {sorted(MODEL_TYPES)}, or an open_clip checkpoint)")
    return MODEL_TYPES[model_type]


def load_backbone(config: ModelConfig) -> Backbone:
    """Load ``config.path`` with the family its files name, on ``config.device`` in ``config.dtype``."""
    source = ModelSource.resolve(config.path, config.revision)
    return FAMILIES[detect_family(source)][0](config, source)


def load_geometry(config: ModelConfig) -> ImageGeometry:
    """The checkpoint's input size and normalisation, read from its config files only (what decoders need before
    any weights are loaded)."""
    source = ModelSource.resolve(config.path, config.revision)
    return FAMILIES[detect_family(source)][1](source)
