"""The decision record: what a human reviewer decided about one output record, one record per decision.

Written by ``cola review`` to the decisions route (Kafka topic ``kafka.decisions_topic``, default ``cola.decisions``,
and/or a Parquet dataset ``DIR/route=decisions/part-*.parquet``) through the same typed-record machinery as the
output records (:class:`DecisionSerializer` is a :class:`~cola_moderation.connectors.base.RecordSerializer`). JSON
Schema: ``cola_moderation/pipeline/runtime/schemas/decision-record.schema.json``. The log is append-only: a changed
decision is a new record with ``revision`` + 1 that ``supersedes`` the previous ``decision_id``.

Fields: ``schema_version, decision_id, id, revision, supersedes, reviewer, decision (confirm | relabel | adversarial |
allow), final_label, note, decided_at`` and, copied from the output record reviewed, ``original_label,
original_score, original_action, topk, adversarial_score, suspected_adversarial, review_reasons, method, model,
policy_version, source, processed_at``, plus the DSA (Art. 17) fields ``automated_detection`` and
``automated_decision`` (``none | partial | full``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal

import pyarrow as pa

from cola_moderation.connectors.records import SourcePosition, source_array
from cola_moderation.pipeline.runtime.records import (
    SOURCE_TYPE,
    TOPK_TYPE,
    IdKeyedSerializer,
    OutputRecord,
    dumps_json,
    position_from_dict,
)

DECISION_SCHEMA_VERSION = 1
DECISION_SCHEMA_FILE = "decision-record.schema.json"
DecisionKind = Literal["confirm", "relabel", "adversarial", "allow"]
DECISIONS: tuple[DecisionKind, ...] = ("confirm", "relabel", "adversarial", "allow")
Automation = Literal["none", "partial", "full"]
MODEL_REASONS_PREFIXES = ("band:", "rule:", "suspected_adversarial")

DECISION_ARROW_SCHEMA = pa.schema([
    ("schema_version", pa.int32()), ("decision_id", pa.string()), ("id", pa.string()), ("revision", pa.int32()),
    ("supersedes", pa.string()), ("reviewer", pa.string()), ("decision", pa.string()), ("final_label", pa.string()),
    ("note", pa.string()), ("decided_at", pa.timestamp("us", tz="UTC")), ("original_label", pa.string()),
    ("original_score", pa.float64()), ("original_action", pa.string()), ("topk", TOPK_TYPE),
    ("adversarial_score", pa.float64()), ("suspected_adversarial", pa.bool_()),
    ("review_reasons", pa.list_(pa.string())), ("method", pa.string()), ("model", pa.string()),
    ("policy_version", pa.string()), ("source", SOURCE_TYPE), ("processed_at", pa.timestamp("us", tz="UTC")),
    ("automated_detection", pa.string()), ("automated_decision", pa.string()),
])


def automated_detection(review_reasons: tuple[str, ...]) -> Automation:
    """``full`` when a model condition (label band / rule, adversarial detector) sent the record to review, ``none``
    when only the random audit sample did."""
    return "full" if any(r.startswith(MODEL_REASONS_PREFIXES) for r in review_reasons) else "none"


def automated_decision(decision: DecisionKind) -> Automation:
    """A reviewer confirming the model's label decided on an automated proposal (``partial``); any other decision is
    the reviewer's own (``none``). Decisions no human saw are ``full`` (the output route; see ``--export dsa``)."""
    return "partial" if decision == "confirm" else "none"


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One reviewer decision about the output record ``id`` (see the module docstring)."""

    decision_id: str
    id: str
    revision: int
    supersedes: str | None
    reviewer: str
    decision: DecisionKind
    final_label: str | None
    note: str
    decided_at: datetime
    original_label: str
    original_score: float
    original_action: str
    topk: tuple[tuple[str, float], ...]
    adversarial_score: float
    suspected_adversarial: bool
    review_reasons: tuple[str, ...]
    method: str
    model: str
    policy_version: str
    source: SourcePosition
    processed_at: datetime
    automated_detection: Automation
    automated_decision: Automation
    schema_version: int = DECISION_SCHEMA_VERSION

    @classmethod
    def from_review(cls, record: OutputRecord, *, decision: DecisionKind, final_label: str | None, reviewer: str,
                    note: str = "", revision: int = 1, supersedes: str | None = None,
                    now: datetime | None = None) -> DecisionRecord:
        """A new decision about ``record`` (``final_label``: the label after review, None when there is none)."""
        return cls(decision_id=uuid.uuid4().hex, id=record.id, revision=revision, supersedes=supersedes,
                   reviewer=reviewer, decision=decision, final_label=final_label, note=note,
                   decided_at=now or datetime.now(UTC), original_label=record.label, original_score=record.score,
                   original_action=record.action, topk=record.topk, adversarial_score=record.adversarial_score,
                   suspected_adversarial=record.suspected_adversarial, review_reasons=record.review_reasons,
                   method=record.method, model=record.model, policy_version=record.policy_version,
                   source=record.source, processed_at=record.processed_at,
                   automated_detection=automated_detection(record.review_reasons),
                   automated_decision=automated_decision(decision))

    def same_decision(self, decision: str, final_label: str | None, note: str) -> bool:
        """Whether a repeated request asks for exactly this decision (then it is not a new revision)."""
        return (self.decision, self.final_label, self.note) == (decision, final_label, note)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version, "decision_id": self.decision_id, "id": self.id,
            "revision": self.revision, "supersedes": self.supersedes, "reviewer": self.reviewer,
            "decision": self.decision, "final_label": self.final_label, "note": self.note,
            "decided_at": _iso(self.decided_at), "original_label": self.original_label,
            "original_score": self.original_score, "original_action": self.original_action,
            "topk": [{"label": label, "score": score} for label, score in self.topk],
            "adversarial_score": self.adversarial_score, "suspected_adversarial": self.suspected_adversarial,
            "review_reasons": list(self.review_reasons), "method": self.method, "model": self.model,
            "policy_version": self.policy_version, "source": self.source.as_dict(),
            "processed_at": _iso(self.processed_at), "automated_detection": self.automated_detection,
            "automated_decision": self.automated_decision,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecisionRecord:
        """Inverse of :meth:`to_json`; also reads Parquet rows (``decided_at`` / ``processed_at`` as datetimes)."""
        return cls(decision_id=data["decision_id"], id=data["id"], revision=int(data["revision"]),
                   supersedes=data.get("supersedes"), reviewer=data["reviewer"], decision=data["decision"],
                   final_label=data.get("final_label"), note=data.get("note") or "",
                   decided_at=_datetime(data["decided_at"]), original_label=data["original_label"],
                   original_score=data["original_score"], original_action=data["original_action"],
                   topk=tuple((t["label"], t["score"]) for t in data["topk"]),
                   adversarial_score=data["adversarial_score"], suspected_adversarial=data["suspected_adversarial"],
                   review_reasons=tuple(data.get("review_reasons") or ()), method=data["method"],
                   model=data["model"], policy_version=data["policy_version"],
                   source=position_from_dict({k: v for k, v in data["source"].items() if v is not None}),
                   processed_at=_datetime(data["processed_at"]), automated_detection=data["automated_detection"],
                   automated_decision=data["automated_decision"], schema_version=int(data["schema_version"]))


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


def _datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def decision_columns(records: list[DecisionRecord]) -> dict[str, pa.Array]:
    """The :data:`DECISION_ARROW_SCHEMA` columns of ``records``."""
    rows = [r.to_json() for r in records]
    columns: dict[str, pa.Array] = {}
    for field in DECISION_ARROW_SCHEMA:
        if field.name == "source":
            columns["source"] = source_array([r.source for r in records])
        elif field.name in ("decided_at", "processed_at"):
            columns[field.name] = pa.array([getattr(r, field.name) for r in records], field.type)
        else:
            columns[field.name] = pa.array([row[field.name] for row in rows], field.type)
    return columns


def decision_table(records: list[DecisionRecord]) -> pa.Table:
    """``records`` as one Arrow table of :data:`DECISION_ARROW_SCHEMA` (the Parquet file's rows)."""
    columns = decision_columns(records)
    return pa.Table.from_arrays([columns[f.name] for f in DECISION_ARROW_SCHEMA], schema=DECISION_ARROW_SCHEMA)


class DecisionSerializer(IdKeyedSerializer):
    """The :class:`~cola_moderation.connectors.base.RecordSerializer` of :class:`DecisionRecord`."""

    schema_version = str(DECISION_SCHEMA_VERSION)
    arrow_schema = DECISION_ARROW_SCHEMA
    record_type = "decision"

    def json_bytes(self, record: DecisionRecord) -> bytes:
        return dumps_json(record.to_json())

    def to_columns(self, records: list[DecisionRecord]) -> dict[str, pa.Array]:
        return decision_columns(records)

    def passthrough(self, record: DecisionRecord) -> Mapping[str, Any]:
        return {}


def decision_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of :meth:`DecisionRecord.to_json`, as shipped in the package."""
    text = resources.files("cola_moderation.pipeline.runtime").joinpath("schemas", DECISION_SCHEMA_FILE).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema
