"""Which family a checkpoint's files select, and the bundled robust config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cola_moderation.operators.backbones.checkpoint import OPEN_CLIP_TINY, save_open_clip_checkpoint
from cola_moderation.operators.backbones.registry import detect_family
from cola_moderation.operators.backbones.sources import ModelSource
from cola_moderation.operators.errors import ModelLoadError
from cola_moderation.pipeline.runtime.config import load_config


def test_families_are_chosen_by_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert detect_family(ModelSource.resolve(str(tiny_model_dir))) == "clip"
    assert detect_family(ModelSource.resolve("builtin:reference")) == "clip"
    open_clip = save_open_clip_checkpoint(tmp_path / "oc", OPEN_CLIP_TINY)
    assert detect_family(ModelSource.resolve(str(open_clip))) == "open_clip"
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="model_type='bert' is not supported"):
        detect_family(ModelSource.resolve(str(other)))
    with pytest.raises(ModelLoadError, match="no open_clip_config.json .* or config.json"):
        detect_family(ModelSource.resolve(str(tmp_path)))


def test_robust_config_names_a_fare_open_clip_checkpoint_with_the_moderation_taxonomy() -> None:
    robust, plain = load_config("moderation-robust"), load_config("moderation")
    assert robust.model.path == "hf-hub:chs20/fare2-clip"
    source = ModelSource.resolve(robust.model.path, robust.model.revision)
    assert (source.repo_id, source.directory) == ("chs20/fare2-clip", None)
    assert robust.taxonomy == plain.taxonomy and robust.method == "cascade"
