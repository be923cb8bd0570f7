"""Package data is found through importlib.resources: bundled configs by name, builtin models by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from cola_moderation import resources
from cola_moderation.operators.errors import ConfigError, ModelLoadError
from cola_moderation.pipeline.runtime.config import load_config


def test_bundled_configs_load_by_name_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert {"reference", "moderation"} <= set(resources.config_names())
    assert load_config("reference").model.path.startswith("builtin:")
    assert load_config("moderation.yaml").model.path == "openai/clip-vit-base-patch32"
    assert resources.config_path("reference") == resources.configs_dir() / "reference.yaml"


def test_an_existing_file_wins_over_a_bundled_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = (resources.configs_dir() / "reference.yaml").read_text().replace("top_k: 3", "top_k: 2")
    Path("reference").write_text(text)
    assert load_config("reference").taxonomy.top_k == 2


def test_unknown_config_name_lists_the_bundled_ones() -> None:
    with pytest.raises(ConfigError, match=r"no bundled config of that name \(bundled: .*reference"):
        load_config("no-such-config")
    with pytest.raises(ConfigError, match="cannot read config nowhere/reference.yaml"):
        load_config("nowhere/reference.yaml")


def test_builtin_models_are_named_after_their_asset_directories() -> None:
    models = resources.builtin_models()
    assert models["reference"] == resources.assets_dir() / "reference-clip"
    assert resources.builtin_model_dir("builtin:reference") == models["reference"]
    assert (models["reference"] / "model.safetensors").is_file()
    with pytest.raises(ModelLoadError, match=r"unknown builtin model 'builtin:nope'; available: builtin:reference"):
        resources.builtin_model_dir("nope")


def test_sample_data_is_package_data() -> None:
    assert resources.sample_parquet().is_file()
    assert (resources.samples_dir() / "images" / "bag.png").is_file()
