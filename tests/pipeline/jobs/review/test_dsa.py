from __future__ import annotations

from datetime import UTC, datetime

from cola_moderation.connectors.records import FilePosition
from cola_moderation.operators.policy import LabelRule, PolicyConfig
from cola_moderation.pipeline.jobs.review.dsa import automated_statements, restricts, statements
from cola_moderation.pipeline.runtime.decisions import DecisionRecord
from cola_moderation.pipeline.runtime.records import OutputRecord

POLICY = PolicyConfig(rules={"weapons": LabelRule(block=0.9, review_band=(0.4, 0.9))})


def record(record_id: str, label: str, action: str, reasons: tuple[str, ...] = ()) -> OutputRecord:
    return OutputRecord(id=record_id, label=label, score=0.95, topk=((label, 0.95),), action=action,
                        adversarial_score=0.0, suspected_adversarial=False, method="clip", model="m",
                        policy_version="p", source=FilePosition("f", 0), processed_at=datetime(2026, 12, 1, tzinfo=UTC),
                        latency_ms=1.0, review_reasons=reasons)


def decide(item: OutputRecord, decision: str, label: str | None, minute: int, revision: int = 1) -> DecisionRecord:
    return DecisionRecord.from_review(item, decision=decision, final_label=label, reviewer="r",  # type: ignore[arg-type]
                                      revision=revision, now=datetime(2026, 12, 3, 8, minute, tzinfo=UTC))


def test_statements_follow_the_newest_restricting_decision() -> None:
    banded = record("a", "weapons", "review", ("band:weapons:[0.4,0.9)",))
    audited = record("b", "safe", "review", ("audit_sample",))
    decisions = [decide(banded, "confirm", "weapons", 1), decide(audited, "adversarial", None, 2),
                 decide(banded, "allow", None, 3, revision=2)]  # a later allow lifts the restriction on a
    assert [restricts(d, POLICY) for d in decisions] == [True, True, False]
    (only,) = statements(decisions, POLICY, platform="p")
    assert only["puid"] == "b" and only["automated_detection"] == "No"
    assert only["automated_decision"] == "AUTOMATED_DECISION_NOT_AUTOMATED"
    (confirmed,) = statements(decisions[:1], POLICY, platform="p")
    assert confirmed["automated_detection"] == "Yes" and confirmed["automated_decision"] == \
        "AUTOMATED_DECISION_PARTIALLY"
    assert confirmed["application_date"] == "2026-12-03" and confirmed["content_date"] == "2026-12-01"


def test_automated_blocks_get_fully_automated_statements() -> None:
    outputs = [record("x", "weapons", "block"), record("y", "safe", "allow"), record("z", "weapons", "block")]
    made = automated_statements(outputs, {"z"}, platform="p")
    assert [s["puid"] for s in made] == ["x"]  # z was reviewed: its statement follows the decision
    assert made[0]["automated_decision"] == "AUTOMATED_DECISION_FULLY" and made[0]["automated_detection"] == "Yes"
