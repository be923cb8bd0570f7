"""A ``transformers`` ``CLIPModel`` checkpoint run in plain torch, without importing ``transformers``.

Why: a worker that loads a CLIP checkpoint through ``transformers`` spends ~1.8 s of CPU importing it (see
docs/benchmarks.md, "Batch start-up"), on every job, before its first batch. The standard CLIP architecture is
small: a ViT image tower and a causal text transformer, pre-LayerNorm blocks, linear projections. This module
builds it from ``config.json`` with the same parameter names as ``CLIPModel`` (so a state dict moves between the
two unchanged, and fine-tuned image towers save in the same format), loads ``model.safetensors`` into it and
tokenises with ``tokenizer.json`` through ``tokenizers`` directly.

It runs only what it can run exactly: :func:`read_config` returns ``None`` with the reason for a checkpoint it does
not cover (an activation it does not know, a list of end-of-text ids, no ``tokenizer.json``), and the caller then
loads it with ``transformers``. Parity with ``CLIPModel`` (features and token ids) is what
``tests/operators/backbones/test_clip_torch.py`` checks.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional

from cola_moderation.operators.backbones.base import Backbone, ImageGeometry, ImageTower
from cola_moderation.operators.backbones.sources import ModelSource, load_state_dict
from cola_moderation.operators.backbones.transformers_clip import COPIED_FILES, HubLoad, copy_files, stored_dtype
from cola_moderation.operators.config import ModelConfig
from cola_moderation.operators.errors import ModelLoadError

log = logging.getLogger(__name__)

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": functional.gelu,
    "gelu_pytorch_tanh": lambda x: functional.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: functional.gelu(x, approximate="tanh"),
}
"""``hidden_act`` values and what ``transformers`` computes for them."""

_TEXT_DEFAULTS: dict[str, Any] = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
                                  "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
                                  "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 49407}
_VISION_DEFAULTS: dict[str, Any] = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                                    "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
                                    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
"""``CLIPTextConfig`` / ``CLIPVisionConfig`` defaults for the keys that shape the computation. ``CLIPModel`` reads
no others (the rest of a saved config is generic bookkeeping: dropout, initialisation, generation settings)."""



@dataclass(frozen=True)
class TowerConfig:
    """One transformer stack of CLIP."""

    width: int
    mlp_width: int
    layers: int
    heads: int
    eps: float
    activation: str


@dataclass(frozen=True)
class ClipTorchConfig:
    """What ``config.json`` says about a standard CLIP, checked; the tokenizer's settings beside it."""

    vision: TowerConfig
    text: TowerConfig
    image_size: int
    patch_size: int
    channels: int
    vocab_size: int
    context_length: int
    eos_token_id: int
    projection_dim: int


def _tower(section: dict[str, Any], defaults: dict[str, Any], name: str) -> TowerConfig | str:
    values = {**defaults, **section}
    if values["hidden_act"] not in ACTIVATIONS:
        return f"{name}.hidden_act={values['hidden_act']!r}"
    if values["hidden_size"] % values["num_attention_heads"]:
        return f"{name}: hidden_size is not a multiple of num_attention_heads"
    return TowerConfig(width=int(values["hidden_size"]), mlp_width=int(values["intermediate_size"]),
                       layers=int(values["num_hidden_layers"]), heads=int(values["num_attention_heads"]),
                       eps=float(values["layer_norm_eps"]), activation=str(values["hidden_act"]))


def read_config(config: dict[str, Any], tokenizer_file: Path | None) -> ClipTorchConfig | str:
    """``config.json`` of a ``CLIPModel`` as a :class:`ClipTorchConfig`, or why this runtime does not cover it."""
    if tokenizer_file is None:
        return "no tokenizer.json"
    if config.get("model_type") != "clip":
        return f"model_type={config.get('model_type')!r}"
    text_section = {**(config.get("text_config") or {}), **(config.get("text_config_dict") or {})}
    vision_section = {**(config.get("vision_config") or {}), **(config.get("vision_config_dict") or {})}
    text = _tower(text_section, _TEXT_DEFAULTS, "text_config")
    vision = _tower(vision_section, _VISION_DEFAULTS, "vision_config")
    for tower in (text, vision):
        if isinstance(tower, str):
            return tower
    assert isinstance(text, TowerConfig) and isinstance(vision, TowerConfig)
    merged_text, merged_vision = {**_TEXT_DEFAULTS, **text_section}, {**_VISION_DEFAULTS, **vision_section}
    eos, image_size, patch = merged_text["eos_token_id"], merged_vision["image_size"], merged_vision["patch_size"]
    if not isinstance(eos, int) or not isinstance(image_size, int) or not isinstance(patch, int):
        return "eos_token_id, image_size and patch_size must be single integers"
    return ClipTorchConfig(vision=vision, text=text, image_size=image_size, patch_size=patch,
                           channels=int(merged_vision["num_channels"]), vocab_size=int(merged_text["vocab_size"]),
                           context_length=int(merged_text["max_position_embeddings"]), eos_token_id=eos,
                           projection_dim=int(config.get("projection_dim", 512)))


class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v projections (``CLIPAttention``'s names)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = x.shape
        shape = (batch, length, self.heads, width // self.heads)
        q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class Mlp(nn.Module):
    def __init__(self, width: int, mlp_width: int, activation: str) -> None:
        super().__init__()
        self.activation = ACTIVATIONS[activation]
        self.fc1 = nn.Linear(width, mlp_width)
        self.fc2 = nn.Linear(mlp_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class Block(nn.Module):
    """A pre-LayerNorm transformer block (``CLIPEncoderLayer``)."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config.width, config.heads)
        self.layer_norm1 = nn.LayerNorm(config.width, eps=config.eps)
        self.mlp = Mlp(config.width, config.mlp_width, config.activation)
        self.layer_norm2 = nn.LayerNorm(config.width, eps=config.eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(config.layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


def _table(rows: int, width: int) -> nn.Embedding:
    """An embedding table filled with zeros instead of ``nn.Embedding``'s random normal initialisation: the model is
    built on the meta device and its tensors assigned from the checkpoint, and ``normal_`` on a meta tensor imports
    ``torch._dynamo`` (~1.2 s of a worker's start on 2 cores; Linear, LayerNorm and Conv2d initialise without it)."""
    return nn.Embedding(rows, width, _weight=torch.zeros(rows, width))


class VisionEmbeddings(nn.Module):
    def __init__(self, config: ClipTorchConfig) -> None:
        super().__init__()
        width = config.vision.width
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.patch_embedding = nn.Conv2d(config.channels, width, config.patch_size, config.patch_size, bias=False)
        self.position_embedding = _table((config.image_size // config.patch_size) ** 2 + 1, width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_embedding.expand(len(pixels), 1, -1), patches], dim=1)
        return tokens + self.position_embedding.weight


class VisionTower(nn.Module):
    """``CLIPVisionTransformer``: normalised pixels ``[B, C, S, S]`` -> pooled (class token) ``[B, width]``."""

    def __init__(self, config: ClipTorchConfig) -> None:
        super().__init__()
        self.image_size = config.image_size
        self.embeddings = VisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.vision.width, eps=config.vision.eps)
        self.encoder = Encoder(config.vision)
        self.post_layernorm = nn.LayerNorm(config.vision.width, eps=config.vision.eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"image size {tuple(pixels.shape[-2:])} does not match the model's {self.image_size}")
        hidden = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))
        return self.post_layernorm(hidden[:, 0])


class TextEmbeddings(nn.Module):
    def __init__(self, config: ClipTorchConfig) -> None:
        super().__init__()
        self.token_embedding = _table(config.vocab_size, config.text.width)
        self.position_embedding = _table(config.context_length, config.text.width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]


class TextTower(nn.Module):
    """``CLIPTextTransformer``: token ids ``[B, L]`` (+ padding mask) -> pooled (end-of-text token) ``[B, width]``."""

    def __init__(self, config: ClipTorchConfig) -> None:
        super().__init__()
        self.eos_token_id = config.eos_token_id
        self.embeddings = TextEmbeddings(config)
        self.encoder = Encoder(config.text)
        self.final_layer_norm = nn.LayerNorm(config.text.width, eps=config.text.eps)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        mask = causal[None, None] & attention_mask.bool()[:, None, None, :]  # [B, 1, L, L]: True = may attend
        hidden = self.final_layer_norm(self.encoder(self.embeddings(ids), mask))
        # transformers: checkpoints whose config still says eos_token_id=2 pool at the highest id (the end-of-text
        # token of CLIP's vocabulary); newer ones at the first end-of-text token
        position = ids.argmax(dim=-1) if self.eos_token_id == 2 else (ids == self.eos_token_id).int().argmax(dim=-1)
        return hidden[torch.arange(len(ids), device=ids.device), position]


class ClipTorchModel(nn.Module):
    """The whole CLIP, parameter for parameter named as ``CLIPModel`` names it."""

    def __init__(self, config: ClipTorchConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = VisionTower(config)
        self.text_model = TextTower(config)
        self.visual_projection = nn.Linear(config.vision.width, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text.width, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load a ``CLIPModel`` state dict (its non-persistent ``position_ids`` buffers, if stored, are dropped);
        raises ``ValueError`` naming missing, unexpected or mis-shaped tensors."""
        state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"weights do not match config.json: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                             f"shapes {shapes[:3]}")
        self.load_state_dict(state, assign=True)  # the stored tensors themselves (a model built on "meta" is free)


class ImageEncoder(nn.Module):
    """The image side: normalised pixels -> projected (unnormalised) features; state dict keys as
    :class:`~.transformers_clip.ClipImageEncoder`'s, so fine-tuned towers load into either."""

    def __init__(self, vision_model: VisionTower, visual_projection: nn.Linear) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values))


class ClipTokenizer:
    """``tokenizer.json`` through ``tokenizers``: texts -> ``input_ids`` and ``attention_mask`` padded to the longest
    text and truncated to the context length, as ``CLIPTokenizer(texts, padding=True, truncation=True)`` gives."""

    def __init__(self, tokenizer_file: Path, tokenizer_config: dict[str, Any], context_length: int) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        limit = tokenizer_config.get("model_max_length")
        self.max_length = min(int(limit), context_length) if isinstance(limit, int | float) else context_length
        self.tokenizer.enable_truncation(self.max_length)
        pad = tokenizer_config.get("pad_token", "<|endoftext|>")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        pad_id = self.tokenizer.token_to_id(str(pad))
        if pad_id is None:
            raise ValueError(f"tokenizer.json has no pad token {pad!r}")
        self.pad_id = pad_id

    @classmethod
    def from_files(cls, tokenizer_file: Path, tokenizer_config_file: Path | None, context_length: int) -> ClipTokenizer:
        config = json.loads(tokenizer_config_file.read_text()) if tokenizer_config_file is not None else {}
        return cls(tokenizer_file, config, context_length)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encodings = self.tokenizer.encode_batch(texts)
        length = max((len(e.ids) for e in encodings), default=0)
        ids = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), length), dtype=torch.long)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids, dtype=torch.long)
            mask[row, : len(encoding.ids)] = 1
        return ids, mask


def plan(source: ModelSource) -> ClipTorchConfig | str:
    """Read ``source``'s ``config.json`` (and look for ``tokenizer.json``): the config this runtime runs, or why it
    does not."""
    found = source.file("config.json")
    if found is None:
        raise source.missing("config.json")
    try:
        config = json.loads(found.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {found}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{found} is not a JSON object")
    try:
        return read_config(config, source.file("tokenizer.json"))
    except (TypeError, ValueError, ArithmeticError) as exc:  # e.g. "text_config": [], "hidden_size": "big"
        raise ModelLoadError(f"{found}: not a usable CLIP config ({type(exc).__name__}: {exc})") from None


class TorchClipBackbone(Backbone):
    """A ``CLIPModel`` checkpoint on :class:`ClipTorchModel` (no ``transformers`` import); the same family,
    checkpoint files and numbers as :class:`~.transformers_clip.ClipBackbone`."""

    family: ClassVar[str] = "clip"

    def __init__(self, model: ClipTorchModel, tokenizer: ClipTokenizer, geometry: ImageGeometry, *, name: str,
                 device: torch.device, dtype: torch.dtype, source: ModelSource | None = None) -> None:
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.source = source
        super().__init__(ImageTower(ImageEncoder(self.model.vision_model, self.model.visual_projection), geometry),
                         name=name, geometry=geometry, device=device, dtype=dtype,
                         embed_dim=model.config.projection_dim,
                         logit_scale=float(self.model.logit_scale.float().exp().item()))

    @classmethod
    def load(cls, config: ModelConfig, load: HubLoad, spec: ClipTorchConfig) -> TorchClipBackbone:
        weights = load.source.file("model.safetensors")
        tokenizer_file = load.source.file("tokenizer.json")
        if weights is None or tokenizer_file is None:
            raise load.source.missing("model.safetensors" if weights is None else "tokenizer.json")
        with torch.device("meta"):  # no random initialisation: every tensor comes from the file
            model = ClipTorchModel(spec)
        try:
            model.load_weights(load_state_dict(weights))
            tokenizer = ClipTokenizer.from_files(tokenizer_file, load.source.file("tokenizer_config.json"),
                                                 spec.context_length)
        except (OSError, ValueError, RuntimeError) as exc:  # tokenizers raises Exception subclasses of these
            raise ModelLoadError(f"cannot load model {config.path!r}: {' '.join(str(exc).split())[:400]}") from exc
        log.info("loaded %s on %s as %s (image size %d; torch runtime, no transformers)", config.path, load.device,
                 config.dtype, load.geometry.size)
        return cls(model, tokenizer, load.geometry, name=config.path, device=load.device, dtype=load.dtype,
                   source=load.source)

    def encode_texts(self, texts: list[str], *, batch_size: int = 256) -> torch.Tensor:
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                ids, mask = self.tokenizer(texts[start : start + batch_size])
                pooled = self.model.text_model(ids.to(self.device), mask.to(self.device))
                chunks.append(self.model.text_projection(pooled).float())
        return functional.normalize(torch.cat(chunks), dim=-1)

    def save_with_image_tower(self, tower: ImageTower, output: Path) -> None:
        from safetensors.torch import save_file

        if self.source is None:
            raise ModelLoadError(f"{self.name}: an in-memory model has no base checkpoint to save beside")
        dtype = stored_dtype(self.source.file("model.safetensors"))
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        state.update({k: v.detach().cpu() for k, v in tower.encoder.state_dict().items()})
        output.mkdir(parents=True, exist_ok=True)
        save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(output / "model.safetensors"),
                  metadata={"format": "pt"})
        copy_files(self.source, output, COPIED_FILES)
