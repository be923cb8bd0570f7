from __future__ import annotations

from datetime import UTC, datetime

import jsonschema
import pyarrow as pa

from cola_moderation.connectors.records import FilePosition, KafkaPosition
from cola_moderation.pipeline.runtime.decisions import (
    DECISION_ARROW_SCHEMA,
    DecisionRecord,
    DecisionSerializer,
    automated_decision,
    automated_detection,
    decision_json_schema,
    decision_table,
)
from cola_moderation.pipeline.runtime.records import OutputRecord

NOW = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)


def output(source: FilePosition | KafkaPosition, reasons: tuple[str, ...]) -> OutputRecord:
    return OutputRecord(id="u-1", label="weapons", score=0.61, topk=(("weapons", 0.61), ("safe", 0.3)),
                        action="review", adversarial_score=0.2, suspected_adversarial=False, method="cascade",
                        model="m", policy_version="p-3", source=source, processed_at=NOW, latency_ms=3.0,
                        metadata={"uploader": "<b>x</b>"}, review_reasons=reasons)


def test_json_and_arrow_forms_round_trip_and_validate() -> None:
    validator = jsonschema.Draft202012Validator(decision_json_schema(), format_checker=jsonschema.FormatChecker())
    records = [
        DecisionRecord.from_review(output(FilePosition("/in.parquet", 4), ("band:weapons:[0.4,0.8)",)),
                                   decision="confirm", final_label="weapons", reviewer="ann", now=NOW),
        DecisionRecord.from_review(output(KafkaPosition("in", 0, 9), ("audit_sample",)), decision="relabel",
                                   final_label="safe", reviewer="ann", note="n", revision=2, supersedes="ab" * 16,
                                   now=NOW),
    ]
    for record in records:
        document = record.to_json()
        validator.validate(document)
        assert DecisionRecord.from_json(document).to_json() == document
    table = decision_table(records)
    assert table.schema == DECISION_ARROW_SCHEMA
    back = [DecisionRecord.from_json(r) for r in table.to_pylist()]
    assert [r.to_json() for r in back] == [r.to_json() for r in records]
    assert records[0].automated_detection == "full" and records[1].automated_detection == "none"
    assert records[0].original_label == "weapons" and records[1].source == KafkaPosition("in", 0, 9)
    serializer = DecisionSerializer()
    assert serializer.key(records[0]) == "u-1" and dict(serializer.headers)["cola.record-type"] == b"decision"
    assert isinstance(serializer.to_columns(records)["topk"], pa.Array)


def test_dsa_automation_fields() -> None:
    assert automated_detection(("suspected_adversarial",)) == "full"
    assert automated_detection(("rule:weapons>=0.3", "audit_sample")) == "full"
    assert automated_detection(("audit_sample",)) == "none" and automated_detection(()) == "none"
    assert automated_decision("confirm") == "partial"
    assert {automated_decision(d) for d in ("relabel", "adversarial", "allow")} == {"none"}
