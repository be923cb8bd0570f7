"""open_clip's checkpoint format, mapped onto ``transformers``' CLIP architecture (pure torch, no open_clip import).

open_clip publishes a model as ``open_clip_config.json`` (``model_cfg``: ``embed_dim``, ``vision_cfg``, ``text_cfg``,
``quick_gelu``; ``preprocess_cfg``: ``mean``, ``std``, ...) plus weights (``open_clip_model.safetensors`` or
``open_clip_pytorch_model.bin``). For the standard ViT CLIP architecture the weights are the same numbers as a
``transformers`` ``CLIPModel``'s, under other names (and with each attention's packed ``in_proj`` split into q, k, v;
the projections stored transposed). This module does that renaming both ways, builds the matching ``CLIPConfig``
fields, and writes random open_clip-format checkpoints for tests and benchmarks.

It imports only torch and :mod:`.base` (safetensors when writing), so that a script running beside real open_clip
can import it from a checkout (``tests/operators/backbones/golden/make_open_clip_golden.py``).
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cola_moderation.operators.backbones.base import CLIP_MEAN, CLIP_STD

CONFIG_NAME = "open_clip_config.json"
SAFETENSORS_NAME = "open_clip_model.safetensors"
CLIP_VOCAB_SIZE = 49408
PICKLE_NAMES = ("open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")

# open_clip config keys whose non-default values change the computation; anything else set here is refused.
_VISION_DEFAULTS: dict[str, Any] = {
    "ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
    "final_ln_after_pool": False, "pool_type": "tok", "act_kwargs": None, "norm_kwargs": None, "block_type": None,
    "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False, "timm_model_name": None, "input_patchnorm": False,
}
_TEXT_DEFAULTS: dict[str, Any] = {
    "hf_tokenizer_name": None, "tokenizer_mode": None, "hf_model_name": None, "ls_init_value": None,
    "embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False, "pool_type": "argmax",
    "proj_bias": False, "proj_type": "linear", "act_kwargs": None, "norm_kwargs": None, "block_type": None,
    "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False,
}
_IGNORED = {"patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained",
            "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path", "tokenizer_kwargs",
            "hf_model_pretrained", "hf_proj_type", "hf_pooler_type", "pad_id", "eos_id"}


@dataclass(frozen=True)
class OpenClipSpec:
    """A standard open_clip ViT CLIP: what ``open_clip_config.json`` says, checked."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    context_length: int
    vocab_size: int
    text_width: int
    text_heads: int
    text_layers: int
    text_mlp: int
    quick_gelu: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OpenClipSpec:
        """Parse an ``open_clip_config.json`` document (or a bare ``model_cfg``); ``ValueError`` names what is not
        the standard ViT CLIP architecture."""
        model = config.get("model_cfg", config)
        if not isinstance(model, dict) or not all(k in model for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ValueError(f"{CONFIG_NAME} has no model_cfg with embed_dim, vision_cfg and text_cfg")
        vision, text = dict(model["vision_cfg"]), dict(model["text_cfg"])
        for where, section, defaults in (("vision_cfg", vision, _VISION_DEFAULTS), ("text_cfg", text, _TEXT_DEFAULTS)):
            for key, value in section.items():
                if key in defaults and value != defaults[key] and not (key == "pool_type" and value is None):
                    raise ValueError(f"{CONFIG_NAME}: model_cfg.{where}.{key}={value!r} is not supported (only the "
                                     "standard ViT CLIP architecture of open_clip is)")
        if model.get("multimodal_cfg"):
            raise ValueError(f"{CONFIG_NAME}: model_cfg.multimodal_cfg (CoCa) is not supported")
        layers = vision.get("layers", 12)
        if not isinstance(layers, int):
            raise ValueError(f"{CONFIG_NAME}: vision_cfg.layers={layers!r}: ResNet image towers are not supported")
        image_size, patch_size = vision.get("image_size", 224), vision.get("patch_size", 16)
        if isinstance(image_size, list | tuple):
            if len(set(image_size)) != 1:
                raise ValueError(f"{CONFIG_NAME}: non-square image_size {image_size} is not supported")
            image_size = image_size[0]
        width = int(vision.get("width", 768))
        head_width = int(vision.get("head_width", 64))
        if width % head_width:
            raise ValueError(f"{CONFIG_NAME}: vision width {width} is not a multiple of head_width {head_width}")
        text_width = int(text.get("width", 512))
        if int(text.get("vocab_size", CLIP_VOCAB_SIZE)) != CLIP_VOCAB_SIZE:
            raise ValueError(f"{CONFIG_NAME}: model_cfg.text_cfg.vocab_size={text.get('vocab_size')} is not CLIP's BPE "
                             f"vocabulary ({CLIP_VOCAB_SIZE}): the checkpoint needs a tokenizer of its own")
        preprocess = config.get("preprocess_cfg", {}) or {}
        mean = tuple(float(v) for v in preprocess.get("mean", CLIP_MEAN))
        std = tuple(float(v) for v in preprocess.get("std", CLIP_STD))
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"{CONFIG_NAME}: preprocess_cfg mean/std must have 3 values")
        return cls(
            embed_dim=int(model["embed_dim"]), image_size=int(image_size), patch_size=int(patch_size),
            vision_width=width, vision_layers=int(layers), vision_heads=width // head_width,
            vision_mlp=int(width * float(vision.get("mlp_ratio", 4.0))),
            context_length=int(text.get("context_length", 77)), vocab_size=int(text.get("vocab_size", CLIP_VOCAB_SIZE)),
            text_width=text_width, text_heads=int(text.get("heads", 8)), text_layers=int(text.get("layers", 12)),
            text_mlp=int(text_width * float(text.get("mlp_ratio", 4.0))), quick_gelu=bool(model.get("quick_gelu")),
            mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]),
            interpolation=str(preprocess.get("interpolation", "bicubic")),
            resize_mode=str(preprocess.get("resize_mode", "shortest")),
        )

    def transformers_config(self) -> dict[str, Any]:
        """Keyword arguments for ``transformers.CLIPConfig`` describing the same network."""
        act = "quick_gelu" if self.quick_gelu else "gelu"
        return {
            "text_config": {
                "hidden_size": self.text_width, "intermediate_size": self.text_mlp,
                "num_hidden_layers": self.text_layers, "num_attention_heads": self.text_heads,
                "max_position_embeddings": self.context_length, "vocab_size": self.vocab_size,
                "hidden_act": act, "layer_norm_eps": 1e-5, "projection_dim": self.embed_dim,
                "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
            },
            "vision_config": {
                "hidden_size": self.vision_width, "intermediate_size": self.vision_mlp,
                "num_hidden_layers": self.vision_layers, "num_attention_heads": self.vision_heads,
                "image_size": self.image_size, "patch_size": self.patch_size, "hidden_act": act,
                "layer_norm_eps": 1e-5, "projection_dim": self.embed_dim,
            },
            "projection_dim": self.embed_dim,
        }

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every open_clip state-dict key of this architecture and its shape."""
        w, tw, e = self.vision_width, self.text_width, self.embed_dim
        grid = self.image_size // self.patch_size
        shapes: dict[str, tuple[int, ...]] = {
            "positional_embedding": (self.context_length, tw), "text_projection": (tw, e), "logit_scale": (),
            "visual.class_embedding": (w,), "visual.positional_embedding": (grid * grid + 1, w),
            "visual.proj": (w, e), "visual.conv1.weight": (w, 3, self.patch_size, self.patch_size),
            "visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,),
        }
        for prefix, width, mlp, layers in (("visual.transformer", w, self.vision_mlp, self.vision_layers),
                                           ("transformer", tw, self.text_mlp, self.text_layers)):
            for i in range(layers):
                block = f"{prefix}.resblocks.{i}"
                shapes.update({
                    f"{block}.ln_1.weight": (width,), f"{block}.ln_1.bias": (width,),
                    f"{block}.attn.in_proj_weight": (3 * width, width), f"{block}.attn.in_proj_bias": (3 * width,),
                    f"{block}.attn.out_proj.weight": (width, width), f"{block}.attn.out_proj.bias": (width,),
                    f"{block}.ln_2.weight": (width,), f"{block}.ln_2.bias": (width,),
                    f"{block}.mlp.c_fc.weight": (mlp, width), f"{block}.mlp.c_fc.bias": (mlp,),
                    f"{block}.mlp.c_proj.weight": (width, mlp), f"{block}.mlp.c_proj.bias": (width,),
                })
            if prefix == "visual.transformer":
                shapes.update({"visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,)})
        shapes.update({"token_embedding.weight": (self.vocab_size, tw), "ln_final.weight": (tw,),
                       "ln_final.bias": (tw,)})
        return shapes


_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1",
          "mlp.c_proj": "mlp.fc2"}


def _block_to_transformers(source: str, target: str, name: str, tensor: torch.Tensor,
                           out: dict[str, torch.Tensor]) -> bool:
    if not name.startswith(source):
        return False
    index, _, rest = name[len(source):].partition(".")
    base = f"{target}.{index}"
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = rest.rsplit("_", 1)[1]
        for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
            out[f"{base}.self_attn.{part}.{kind}"] = chunk.contiguous()
        return True
    module, _, kind = rest.rpartition(".")
    if module not in _BLOCK:
        raise ValueError(f"unexpected open_clip weight {name!r}")
    out[f"{base}.{_BLOCK[module]}.{kind}"] = tensor
    return True


def to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip ViT CLIP state dict -> ``transformers`` ``CLIPModel`` state dict (same tensors, renamed/split)."""
    if any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    # custom_text checkpoints (open_clip's CustomTextCLIP) keep the same text tower under "text."
    state = {k.removeprefix("text.") if k.startswith("text.") else k: v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    direct = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    for name, tensor in state.items():
        if name in direct:
            out[direct[name]] = tensor.reshape(()) if name == "logit_scale" else tensor
        elif name == "visual.positional_embedding":
            out["vision_model.embeddings.position_embedding.weight"] = tensor
        elif name == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = tensor
        elif name == "visual.proj":
            out["visual_projection.weight"] = tensor.T.contiguous()
        elif name == "text_projection":
            out["text_projection.weight"] = tensor.T.contiguous()
        elif name in ("attn_mask", "logit_bias"):
            continue
        elif not (_block_to_transformers("visual.transformer.resblocks.", "vision_model.encoder.layers", name, tensor,
                                         out)
                  or _block_to_transformers("transformer.resblocks.", "text_model.encoder.layers", name, tensor, out)):
            raise ValueError(f"unexpected open_clip weight {name!r} (not a standard ViT CLIP checkpoint)")
    return out


def image_tower_to_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``transformers`` ``vision_model.*`` / ``visual_projection.*`` tensors -> open_clip ``visual.*`` tensors
    (the inverse of :func:`to_transformers` on the image tower)."""
    inverse_block = {v: k for k, v in _BLOCK.items()}
    direct = {
        "vision_model.embeddings.class_embedding": "visual.class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
        "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
        "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
        "vision_model.post_layernorm.weight": "visual.ln_post.weight",
        "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    }
    out: dict[str, torch.Tensor] = {}
    packed: dict[str, dict[str, torch.Tensor]] = {}
    prefix = "vision_model.encoder.layers."
    for name, tensor in state.items():
        if name in direct:
            out[direct[name]] = tensor
        elif name == "visual_projection.weight":
            out["visual.proj"] = tensor.T.contiguous()
        elif name.startswith(prefix):
            index, _, rest = name[len(prefix):].partition(".")
            module, _, kind = rest.rpartition(".")
            block = f"visual.transformer.resblocks.{index}"
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                packed.setdefault(f"{block}.attn.in_proj_{kind}", {})[module[-6]] = tensor
            else:
                out[f"{block}.{inverse_block[module]}.{kind}"] = tensor
        elif name == "vision_model.embeddings.position_ids":
            continue
        else:
            raise ValueError(f"not an image-tower weight: {name!r}")
    for name, parts in packed.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0).contiguous()
    return out


def random_state_dict(spec: OpenClipSpec, *, seed: int = 0, logit_bias: float | None = None) -> dict[str, torch.Tensor]:
    """Reproducible random weights for ``spec`` (each tensor seeded from ``seed`` and its name, so any torch version
    and either side of a parity check build the same numbers); ``logit_bias`` adds that parameter (sigmoid-trained
    checkpoints, open_clip's ``init_logit_bias``)."""
    state: dict[str, torch.Tensor] = {}
    for name, shape in spec.shapes().items():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        noise = torch.randn(shape, generator=generator)
        if name == "logit_scale":
            state[name] = torch.tensor(math.log(1 / 0.07))
        elif "ln_" in name and name.endswith(".weight"):
            state[name] = 1.0 + 0.1 * noise
        elif name.endswith("bias") or "ln_" in name:
            state[name] = 0.02 * noise
        else:
            fan_in = shape[-1] if len(shape) > 1 else shape[0]
            if name.endswith("conv1.weight"):
                fan_in = 3 * spec.patch_size * spec.patch_size
            state[name] = noise / math.sqrt(fan_in) if name.endswith(("weight", "proj", "projection")) else 0.02 * noise
    if logit_bias is not None:
        state["logit_bias"] = torch.tensor([logit_bias])
    return state


def as_custom_text(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` in the layout of open_clip's ``CustomTextCLIP`` (``custom_text: true``): the text tower under
    ``text.``, the image tower and the logit scale / bias where they were."""
    kept = ("visual.", "logit_scale", "logit_bias")
    return {k if k.startswith(kept) else f"text.{k}": v for k, v in state.items()}


def model_config(spec_fields: dict[str, Any], *, mean: tuple[float, ...] = CLIP_MEAN,
                 std: tuple[float, ...] = CLIP_STD) -> dict[str, Any]:
    """An ``open_clip_config.json`` document for a model_cfg dict, with open_clip's usual preprocess_cfg."""
    return {"model_cfg": spec_fields, "preprocess_cfg": {"mean": list(mean), "std": list(std),
                                                          "interpolation": "bicubic", "resize_mode": "shortest"}}


def write_checkpoint(directory: Path, config: dict[str, Any], state: dict[str, torch.Tensor], *,
                     pickle: bool = False) -> Path:
    """Write ``open_clip_config.json`` and the weights (safetensors, or ``.bin`` through ``torch.save``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.contiguous() for k, v in state.items()}
    if pickle:
        torch.save(tensors, directory / PICKLE_NAMES[0])
    else:
        from safetensors.torch import save_file

        save_file(tensors, str(directory / SAFETENSORS_NAME))
    return directory
