"""The harness on the bundled reference model and the committed sample images (real model, real attack)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.config import ColaConfig
from cola_moderation.operators.errors import ConfigError
from cola_moderation.pipeline.research.evaluation.datasets import EvalDataset, load_parquet
from cola_moderation.pipeline.research.evaluation.harness import (
    SCORED,
    AttackSpec,
    EvalResult,
    Harness,
    eps_label,
    only_stage,
    parse_eps,
)
from cola_moderation.pipeline.research.evaluation.report import build_report
from cola_moderation.pipeline.runtime.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[4]


@pytest.fixture(scope="module")
def config() -> PipelineConfig:
    return load_config(REPO / "configs" / "reference.yaml")


@pytest.fixture(scope="module")
def harness(config: PipelineConfig) -> Harness:
    backbone = load_backbone(config.model.model_copy(update={"device": "cpu"}))
    return Harness(backbone, taxonomy=config.taxonomy, cola=config.cola, detector=config.detector)


@pytest.fixture(scope="module")
def samples(config: PipelineConfig, harness: Harness) -> EvalDataset:
    return load_parquet(REPO / "samples" / "sample.parquet", label_names=config.taxonomy.label_names,
                        size=harness.backbone.geometry.size).head(16)


def test_parse_eps_and_labels() -> None:
    assert parse_eps("0, 1/255,0.5") == [Fraction(0), Fraction(1, 255), Fraction(1, 2)]
    assert [eps_label(e) for e in parse_eps("0,4/255,1/510,0.01")] == ["clean", "4/255", "0.5/255", "0.01"]
    with pytest.raises(ConfigError, match="'x/255'"):
        parse_eps("x/255")
    with pytest.raises(ConfigError, match="outside"):
        parse_eps("2")


def test_attack_spec_validation() -> None:
    with pytest.raises(ConfigError, match="--attack"):
        AttackSpec(name="fgsm", eps=(Fraction(1, 255),))
    with pytest.raises(ConfigError, match="--steps"):
        AttackSpec(name="pgd", eps=(Fraction(1, 255),), steps=0)
    assert AttackSpec(name="none", eps=(Fraction(1, 255),)).attacked_eps == ()
    assert AttackSpec(name="pgd", eps=(Fraction(0), Fraction(2, 255))).attacked_eps == (Fraction(2, 255),)


def test_only_stage_switches_exactly_one_stage() -> None:
    config = only_stage(ColaConfig(), "projection")
    assert (config.views.enabled, config.projection.enabled, config.transport.enabled) == (False, True, False)


def numbers(result: EvalResult) -> tuple[object, ...]:
    return ({k: (r.accuracy, r.target_fooled, r.escalated, {m: s.tolist() for m, s in r.detector_scores.items()})
             for k, r in result.results.items()}, result.detection)


def test_gray_box_pgd_breaks_plain_clip_and_is_reproducible(harness: Harness, samples: EvalDataset) -> None:
    spec = AttackSpec(name="pgd", eps=(Fraction(8, 255),), steps=3, batch_size=16)
    first = harness.run(samples, spec)
    clean, attacked = first.results["clean"].accuracy, first.results["8/255"].accuracy
    assert set(clean) == set(SCORED)
    assert clean["clip"] >= 0.7  # the reference model classifies the sample images
    assert attacked["clip"] <= clean["clip"] - 0.3  # the attack works on the model it was crafted on
    assert first.results["8/255"].target_fooled == pytest.approx(1 - attacked["clip"])
    assert set(first.detection["8/255"]) == {"clip", "cola", "cascade"}
    assert numbers(harness.run(samples, spec)) == numbers(first)
    other_seed = harness.run(samples, AttackSpec(name="pgd", eps=(Fraction(8, 255),), steps=3, batch_size=16, seed=1))
    assert numbers(other_seed) != numbers(first)  # the seed matters, so the equality above is not vacuous


def test_cw_and_adaptive_attacks_lower_their_targets(harness: Harness, samples: EvalDataset) -> None:
    few = EvalDataset(samples.name, samples.pixels[:8], samples.labels[:8], samples.label_names)
    cw = harness.run(few, AttackSpec(name="cw", eps=(Fraction(16, 255),), steps=3))
    assert cw.results["16/255"].accuracy["clip"] < cw.results["clean"].accuracy["clip"]
    adaptive = harness.run(few, AttackSpec(name="eot-pgd", eps=(Fraction(16, 255),), steps=3, eot_samples=2))
    assert adaptive.results["16/255"].accuracy["cola"] < adaptive.results["clean"].accuracy["cola"]
    assert adaptive.results["16/255"].target_fooled == pytest.approx(1 - adaptive.results["16/255"].accuracy["cola"])
    report = build_report(adaptive, config={}, model={}, dataset=few.summary())
    assert report["attack"]["threat_model"] == "adaptive" and report["attack"]["target"] == "cola"
    assert report["attack"]["eot_samples"] == 2


def test_no_attack_scores_clean_only(harness: Harness, samples: EvalDataset) -> None:
    result = harness.run(samples.head(8), AttackSpec(name="none", eps=(Fraction(4, 255),)))
    assert list(result.results) == ["clean"] and result.detection == {}
    report = build_report(result, config={}, model={}, dataset={})
    assert report["attack"]["threat_model"] is None and report["detection"]["by_eps"] == {}
