"""The output record: one definition behind the JSON form, the published JSON Schema and the Arrow columns."""

from __future__ import annotations

from datetime import UTC, datetime

import jsonschema
import pyarrow as pa
import pytest

from cola_moderation.connectors.records import FilePosition, HttpPosition, KafkaPosition
from cola_moderation.pipeline.runtime.records import (
    ARROW_SCHEMA,
    SCHEMA_VERSION,
    OutputRecord,
    OutputSerializer,
    json_schema,
)


def record(**changes: object) -> OutputRecord:
    fields: dict[str, object] = dict(
        id="a", label="cat", score=0.9, topk=(("cat", 0.9), ("dog", 0.1)), action="allow", adversarial_score=0.2,
        suspected_adversarial=False, method="clip", model="m", policy_version="1",
        source=KafkaPosition("in", 0, 5), processed_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        latency_ms=1.5, metadata={"tenant": "t", "n": float("nan")})
    fields.update(changes)
    return OutputRecord(**fields)  # type: ignore[arg-type]


def test_json_schema_matches_the_record_definition() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    keys = set(record().to_json())
    assert keys == set(schema["properties"])
    # added to version 3 for animated inputs and hash matching: optional, so records written before them validate
    assert set(schema["required"]) == keys - {"frame", "frame_count", "decided_by", "match"}
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert set(ARROW_SCHEMA.names) == keys - {"metadata"}  # Arrow: metadata becomes top-level columns


@pytest.mark.parametrize("source", [KafkaPosition("in", 1, 7), FilePosition("/d/a.parquet", 3), HttpPosition("r")])
def test_serialized_records_validate_and_round_trip(source: object) -> None:
    import json

    serializer = OutputSerializer()
    value = record(source=source)
    document = json.loads(serializer.json_bytes(value))
    jsonschema.Draft202012Validator(json_schema(), format_checker=jsonschema.FormatChecker()).validate(document)
    assert document["metadata"]["n"] == "NaN"  # standard JSON: non-finite numbers as strings
    assert OutputRecord.from_json(document).to_json() == document
    assert serializer.key(value) == "a"
    assert dict(serializer.headers) == {"content-type": b"application/json",
                                        "cola.schema-version": str(SCHEMA_VERSION).encode()}


def test_non_finite_scores_of_the_record_itself_are_strings_too() -> None:
    import json

    value = record(score=float("nan"), topk=(("cat", float("inf")),), adversarial_score=float("-inf"), metadata={},
                   match={"bank": "b", "distance": float("nan")})
    document = json.loads(OutputSerializer().json_bytes(value))
    assert (document["score"], document["topk"][0]["score"], document["adversarial_score"]) == \
        ("NaN", "Infinity", "-Infinity")
    assert document["match"]["distance"] == "NaN"
    assert json.loads(OutputSerializer().json_bytes(record(metadata={}))) == record(metadata={}).to_json()


def test_invalid_documents_are_refused_by_the_schema() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    document = record().to_json()
    for broken in ({**document, "score": "high"}, {**document, "extra": 1},
                   {k: v for k, v in document.items() if k != "label"},
                   {**document, "source": {"topic": "t"}}):
        assert not validator.is_valid(broken)


def test_arrow_columns_have_the_declared_types() -> None:
    table = pa.table(OutputSerializer().to_columns([record(), record(id="b", source=FilePosition("f", 2))]))
    assert table.schema == ARROW_SCHEMA
    assert table.column("source").to_pylist()[1] == {"topic": None, "partition": None, "offset": None,
                                                      "file": "f", "row": 2, "request": None}
    assert table.column("topk").to_pylist()[0] == [{"label": "cat", "score": 0.9}, {"label": "dog", "score": 0.1}]


def test_a_match_round_trips_through_json_and_arrow() -> None:
    hit = {"bank": "known", "signal_type": "pdq", "distance": 12, "hash": "ab" * 32, "label": None}
    value = record(match=hit, decided_by="match")
    document = value.to_json()
    jsonschema.validate(document, json_schema())
    assert document["match"] == hit and OutputRecord.from_json(document).match == hit
    columns = OutputSerializer().to_columns([value, record()])
    assert columns["match"].to_pylist() == [hit, None] and columns["decided_by"].to_pylist() == ["match", "model"]
    assert pa.table(columns).schema == ARROW_SCHEMA
    # A version-2 document (no match, no decided_by) still reads.
    old = {k: v for k, v in record().to_json().items() if k not in ("match", "decided_by")}
    assert OutputRecord.from_json({**old, "schema_version": 2}).decided_by == "model"
