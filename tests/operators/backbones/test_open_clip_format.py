"""The open_clip <-> transformers CLIP renaming, without a model."""

from __future__ import annotations

import pytest
import torch

from cola_moderation.operators.backbones import open_clip_format as fmt
from cola_moderation.operators.backbones.checkpoint import OPEN_CLIP_TINY, OPEN_CLIP_VIT_B_32


def test_spec_of_vit_b_32() -> None:
    spec = fmt.OpenClipSpec.from_config(fmt.model_config(OPEN_CLIP_VIT_B_32))
    assert (spec.vision_width, spec.vision_heads, spec.vision_mlp, spec.image_size) == (768, 12, 3072, 224)
    assert (spec.text_width, spec.text_heads, spec.context_length, spec.quick_gelu) == (512, 8, 77, False)
    assert spec.mean == fmt.CLIP_MEAN
    config = spec.transformers_config()
    assert config["vision_config"]["hidden_act"] == "gelu" and config["projection_dim"] == 512
    assert fmt.OpenClipSpec.from_config(OPEN_CLIP_TINY).transformers_config()["text_config"]["hidden_act"] == (
        "quick_gelu")


def test_image_tower_round_trip_is_exact() -> None:
    spec = fmt.OpenClipSpec.from_config(OPEN_CLIP_TINY)
    state = fmt.random_state_dict(spec, seed=1)
    converted = fmt.to_transformers(state)
    assert not any(k.startswith(("visual.", "transformer.")) for k in converted)
    assert converted["visual_projection.weight"].shape == (spec.embed_dim, spec.vision_width)
    back = fmt.image_tower_to_open_clip({k: v for k, v in converted.items()
                                         if k.startswith(("vision_model.", "visual_projection."))})
    visual = {k: v for k, v in state.items() if k.startswith("visual.")}
    assert back.keys() == visual.keys()
    for key, tensor in visual.items():
        assert torch.equal(back[key], tensor), key


def test_random_weights_depend_only_on_seed_and_name() -> None:
    spec = fmt.OpenClipSpec.from_config(OPEN_CLIP_TINY)
    first, again, other = (fmt.random_state_dict(spec, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["visual.proj"], other["visual.proj"])
    assert set(first) == set(spec.shapes())


def test_unknown_weight_names_are_refused() -> None:
    state = fmt.random_state_dict(fmt.OpenClipSpec.from_config(OPEN_CLIP_TINY))
    state["visual.attn_pool.query"] = torch.zeros(1)
    with pytest.raises(ValueError, match="visual.attn_pool.query"):
        fmt.to_transformers(state)
