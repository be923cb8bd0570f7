from __future__ import annotations

from pathlib import Path

import pytest

from cola_moderation.operators.errors import ConfigError
from cola_moderation.pipeline.runtime.config import load_config, parse_config

REPO = Path(__file__).resolve().parents[3]
BASE = {"taxonomy": {"labels": ["cat", "dog"]}}


def test_bundled_configs_load() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = load_config(path)
        assert len(config.taxonomy.labels) >= 2, path


def test_moderation_config_targets_real_clip() -> None:
    config = load_config(REPO / "configs" / "moderation.yaml")
    assert config.model.path == "openai/clip-vit-base-patch32"
    assert "weapons" in config.taxonomy.label_names


def test_defaults() -> None:
    config = parse_config(BASE)
    assert config.model.device == "auto"
    assert config.taxonomy.labels[0].phrases() == ("cat",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**BASE, "modle": {}}, "modle: unknown key"),
        ({**BASE, "model": {"device": "gpu"}}, "model.device: Value error, must be auto, cpu, cuda or cuda:N"),
        ({**BASE, "model": {"dtype": "fp8"}}, "model.dtype: Input should be 'fp32', 'fp16', 'bf16' or 'auto'"),
        ({**BASE, "model": {"batch_size": 0}}, "model.batch_size: Input should be greater than or equal to 1"),
        ({"taxonomy": {"labels": ["cat", {"name": "dog", "synonym": ["puppy"]}]}},
         r"taxonomy.labels\[1\].synonym: unknown key"),
        ({"taxonomy": {"labels": ["cat", "cat"]}}, "duplicate label names"),
        ({"taxonomy": {"labels": ["cat", "dog"], "templates": ["a photo"]}}, "exactly one '{}' placeholder"),
        ({"model": {}}, "taxonomy: required key is missing"),
        ({**BASE, "detector": {"noise_amplitude": "4/0"}},
         "detector.noise_amplitude: Value error, must be a number or a fraction like 4/255, got '4/0'"),
        ({**BASE, "detector": {"noise_amplitude": 0}}, "detector.noise_amplitude: Input should be greater than 0"),
        ({**BASE, "policy": {"audit_sampel": 0.1}}, "policy.audit_sampel: unknown key"),
        ({**BASE, "policy": {"audit_sample": 2}}, "policy.audit_sample: Input should be less than or equal to 1"),
        ({**BASE, "policy": {"rules": {"cat": {"review_band": [0.8, 0.2]}}}}, r"policy.rules.cat: .*low < high"),
        ({**BASE, "policy": {"rules": {"cta": {"review_band": [0.2, 0.8]}}}}, r"not in the taxonomy: \['cta'\]"),
    ],
)
def test_bad_values_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_noise_amplitude_takes_fractions() -> None:
    config = parse_config({**BASE, "detector": {"noise_amplitude": "4/255"}})
    assert config.detector.noise_amplitude == pytest.approx(4 / 255)


def test_configs_are_frozen() -> None:
    config = parse_config(BASE)
    with pytest.raises(Exception, match="frozen"):
        config.model.device = "cpu"  # type: ignore[misc]


def test_relative_model_path_resolves_from_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("model: {path: ./models/mine}\ntaxonomy: {labels: [a, b]}\n")
    assert load_config(tmp_path / "c.yaml").model.path == str(tmp_path / "models" / "mine")


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
