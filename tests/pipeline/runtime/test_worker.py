from __future__ import annotations

import io
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from cola_moderation.connectors.records import FilePosition, InputRecord, Route
from cola_moderation.pipeline.runtime.config import PipelineConfig, parse_config
from cola_moderation.pipeline.runtime.records import SCHEMA_VERSION, OutputRecord, json_schema
from cola_moderation.pipeline.runtime.worker import ModerationWorker


@pytest.fixture(scope="module")
def worker(tiny_model_dir: Path) -> ModerationWorker:
    config = parse_config({
        "model": {"path": str(tiny_model_dir), "device": "cpu"},
        "taxonomy": {"labels": ["cat", "dog", "car"], "templates": ["a photo of a {}."], "top_k": 3},
        "method": "clip",
        # The random tiny model's detector scores are meaningless; route on a label rule instead.
        "detector": {"enabled": False},
        "policy": {"version": "test-9", "rules": {"car": {"review": 0.0}}, "quarantine_actions": ["review"]},
    })
    return ModerationWorker(config)


def png(seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def record(index: int, payload: bytes) -> InputRecord:
    return InputRecord(f"id-{index}", payload, {"uploader": f"u{index}"}, FilePosition("in.parquet", index))


def test_every_input_is_routed_exactly_once(worker: ModerationWorker) -> None:
    records = [record(0, png(0)), record(1, b""), record(2, png(2)), record(3, b"GIF89a-broken")]
    result = worker.process(records, received_at=0.0)
    assert len(result) == 4
    kinds = [(type(o).__name__, o.record.id) for o in result.outcomes]  # one outcome per input, in input order
    assert kinds == [("Routed", "id-0"), ("DeadLetter", "id-1"), ("Routed", "id-2"), ("DeadLetter", "id-3")]
    assert {d.error_stage for d in result.dead_letters} == {"decode"}
    assert "empty" in result.dead_letters[0].error_message


def test_output_record_schema(worker: ModerationWorker) -> None:
    (routed,) = worker.process([record(7, png(7))]).routed
    route, out = routed.route, routed.record.to_json()
    assert OutputRecord.from_json(out).to_json() == out  # JSON round trip (processed_at: milliseconds)
    jsonschema.Draft202012Validator(json_schema(), format_checker=jsonschema.FormatChecker()).validate(out)
    assert set(out) == {"schema_version", "id", "label", "score", "topk", "action", "adversarial_score",
                        "suspected_adversarial", "method", "model", "policy_version", "source", "processed_at",
                        "latency_ms", "metadata", "review_reasons", "frame", "frame_count", "decided_by",
                        "match"}
    assert (out["frame"], out["frame_count"]) == (0, 1)  # a still image
    assert out["schema_version"] == SCHEMA_VERSION
    assert out["source"] == {"file": "in.parquet", "row": 7}
    assert out["metadata"] == {"uploader": "u7"}
    assert out["policy_version"] == "test-9" and out["method"] == "clip"
    assert out["label"] == out["topk"][0]["label"] and len(out["topk"]) == 3
    assert out["latency_ms"] >= 0
    # top_k covers every label and the "car" rule fires at any score: review, routed to quarantine
    assert out["action"] == "review" and route is Route.QUARANTINE


def test_policy_labels_are_validated_up_front(tiny_model_dir: Path) -> None:
    from cola_moderation.operators.errors import ConfigError

    with pytest.raises(ConfigError, match=r"policy: .*\['truck'\]"):
        parse_config({"taxonomy": {"labels": ["cat", "dog"]}, "policy": {"rules": {"truck": {"block": 0.5}}}})
    assert isinstance(parse_config({"taxonomy": {"labels": ["cat", "dog"]}}), PipelineConfig)
