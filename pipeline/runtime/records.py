"""The output record: one typed class, one schema version, its JSON form (Kafka value, HTTP body) and its Arrow
columns (Parquet) defined here once.

Fields (see docs/records.md; JSON Schema: ``cola_moderation/pipeline/runtime/schemas/output-record.schema.json``):
``schema_version, id, label, score, topk[{label, score}], action, adversarial_score, suspected_adversarial, method,
model, policy_version, source{topic, partition, offset | file, row | request}, processed_at (ISO 8601 UTC in JSON,
timestamp[us, UTC] in Arrow), latency_ms, metadata{...passthrough...}, review_reasons[...], frame, frame_count,
decided_by (model | match), match{bank, signal_type, distance, hash, label} | null``.

Version history: 1 - first release; 2 - Parquet output is one hive-partitioned dataset (``route=...``, dead-letter
columns in the same schema, passthrough clashes renamed ``metadata_<name>``), Kafka messages carry ``content-type``
and ``cola.schema-version`` headers. The JSON fields did not change. 3 - ``review_reasons`` (the policy conditions that
asked for review: label bands and rules, adversarial, audit sample), and ``frame``, ``frame_count`` (the deciding frame
of an animated input; 0 and 1 for a still image; optional in JSON, readers default them), and ``decided_by``,
``match`` (the hash-bank hit of the matching stage; optional in JSON, readers default them to ``model`` and null), the
last record columns in Arrow.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from cola_moderation.connectors.json_codec import dumps_compact, finite_or_string, has_non_finite
from cola_moderation.connectors.records import (
    SOURCE_ARROW_TYPE,
    FilePosition,
    HttpPosition,
    InputRecord,
    KafkaPosition,
    SourcePosition,
    source_array,
)

if TYPE_CHECKING:
    from cola_moderation.operators.matching.matcher import Match
    from cola_moderation.operators.moderator import Moderation
    from cola_moderation.operators.policy import Decision

SCHEMA_VERSION = 3
CONTENT_TYPE = "application/json"
SCHEMA_FILE = "output-record.schema.json"
"""The JSON Schema of the JSON form, shipped in ``cola_moderation/pipeline/runtime/schemas/`` (see
:func:`json_schema`)."""

SOURCE_TYPE = SOURCE_ARROW_TYPE
TOPK_TYPE = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
MATCH_TYPE = pa.struct([("bank", pa.string()), ("signal_type", pa.string()), ("distance", pa.int32()),
                        ("hash", pa.string()), ("label", pa.string())])
ARROW_SCHEMA = pa.schema([
    ("schema_version", pa.int32()), ("id", pa.string()), ("label", pa.string()), ("score", pa.float64()),
    ("topk", TOPK_TYPE), ("action", pa.string()), ("adversarial_score", pa.float64()),
    ("suspected_adversarial", pa.bool_()), ("method", pa.string()), ("model", pa.string()),
    ("policy_version", pa.string()), ("source", SOURCE_TYPE), ("processed_at", pa.timestamp("us", tz="UTC")),
    ("latency_ms", pa.float64()), ("review_reasons", pa.list_(pa.string())),
    ("frame", pa.int32()), ("frame_count", pa.int32()), ("decided_by", pa.string()), ("match", MATCH_TYPE),
])
"""The record's own columns, in order; passthrough metadata follows them as top-level columns."""


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """What the pipeline says about one input that decoded. ``topk`` is (label, score) pairs, best first;
    ``processed_at`` is an aware UTC datetime; ``metadata`` is the input's passthrough."""

    id: str
    label: str
    score: float
    topk: tuple[tuple[str, float], ...]
    action: str
    adversarial_score: float
    suspected_adversarial: bool
    method: str
    model: str
    policy_version: str
    source: SourcePosition
    processed_at: datetime
    latency_ms: float
    metadata: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    review_reasons: tuple[str, ...] = ()
    frame: int = 0
    """Index of the deciding frame in an animated / multi-page input (0 for a still image)."""
    frame_count: int = 1
    """Frames in the input's file (1 for a still image)."""
    match: Mapping[str, Any] | None = None
    """The hash-bank hit ``{bank, signal_type, distance, hash, label}`` (see :mod:`cola_moderation.operators.matching`),
    or ``None``."""
    decided_by: str = "model"
    """``match`` when a bank hit set the action (the model was skipped, or the bank's action is at least as strict
    as the model's), else ``model``."""

    @classmethod
    def of(cls, record: InputRecord, fields: Mapping[str, Any]) -> OutputRecord:
        """The output record of ``record`` with the record's own ``fields`` (:func:`verdict_fields` /
        :func:`match_fields`): the input gives ``id``, ``source`` and ``metadata``."""
        return cls(id=record.id, source=record.source, metadata=record.metadata, **fields)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (a dict of JSON types; :func:`dumps` encodes it)."""
        return {
            "schema_version": self.schema_version, "id": self.id, "label": self.label, "score": self.score,
            "topk": [{"label": label, "score": score} for label, score in self.topk], "action": self.action,
            "adversarial_score": self.adversarial_score, "suspected_adversarial": self.suspected_adversarial,
            "method": self.method, "model": self.model, "policy_version": self.policy_version,
            "source": self.source.as_dict(),
            "processed_at": _utc_text(self.processed_at),
            "latency_ms": self.latency_ms, "metadata": dict(self.metadata), "review_reasons": list(self.review_reasons),
            "frame": self.frame, "frame_count": self.frame_count, "decided_by": self.decided_by,
            "match": None if self.match is None else dict(self.match),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutputRecord:
        """Inverse of :meth:`to_json` (e.g. a consumer of the output topic)."""
        return cls(id=data["id"], label=data["label"], score=data["score"],
                   topk=tuple((t["label"], t["score"]) for t in data["topk"]), action=data["action"],
                   adversarial_score=data["adversarial_score"], suspected_adversarial=data["suspected_adversarial"],
                   method=data["method"], model=data["model"], policy_version=data["policy_version"],
                   source=position_from_dict(data["source"]),
                   processed_at=datetime.fromisoformat(data["processed_at"]), latency_ms=data["latency_ms"],
                   metadata=data.get("metadata") or {}, schema_version=data["schema_version"],
                   review_reasons=tuple(data.get("review_reasons") or ()),
                   frame=data.get("frame", 0), frame_count=data.get("frame_count", 1), match=data.get("match"),
                   decided_by=data.get("decided_by", "model"))


def position_from_dict(data: Mapping[str, Any]) -> SourcePosition:
    """Inverse of ``SourcePosition.as_dict``."""
    if "topic" in data:
        return KafkaPosition(data["topic"], int(data["partition"]), int(data["offset"]))
    if "file" in data:
        return FilePosition(data["file"], int(data["row"]))
    return HttpPosition(data["request"])


def json_default(value: Any) -> Any:
    """JSON encoding of the non-JSON types passthrough metadata may hold (datetimes, paths, numpy scalars)."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "item"):
        return finite_or_string(value.item())
    raise TypeError(f"output record field of type {type(value).__name__} is not JSON-serialisable: {value!r}")


def _utc_text(value: datetime) -> str:
    """``value`` in UTC, to the millisecond (``2026-12-03T21:40:00.123+00:00``)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds")


def dumps(record: OutputRecord) -> bytes:
    """Compact, standard UTF-8 JSON of ``record`` (non-finite floats as strings, see
    :mod:`cola_moderation.connectors.json_codec`). The record's own floats are checked here, so only the passthrough
    metadata and the bank match are searched for non-finite ones."""
    document = record.to_json()
    finite = (math.isfinite(record.score) and math.isfinite(record.adversarial_score)
              and math.isfinite(record.latency_ms) and all(math.isfinite(score) for _, score in record.topk)
              and not has_non_finite(document["metadata"]) and not has_non_finite(document["match"]))
    return dumps_compact(document, default=json_default, finite=finite)


def dumps_json(document: Mapping[str, Any]) -> bytes:
    """Compact, standard UTF-8 JSON of a record's JSON form (any record type)."""
    return dumps_compact(document, default=json_default)


FIELD_NAMES: tuple[str, ...] = tuple(name for name in ARROW_SCHEMA.names if name not in ("id", "source"))
"""The record's own fields: everything :data:`ARROW_SCHEMA` holds but what the input gives (``id``, ``source``)."""


def verdict_fields(verdict: Moderation, decision: Decision, *, model: str, policy_version: str, received_at: float,
                   now: float | None = None, match: Match | None = None, decided_by: str = "model") -> dict[str, Any]:
    """The record's own fields (:data:`FIELD_NAMES`) for the model's ``verdict`` and the policy's ``decision``.
    ``received_at``/``now`` are ``time.time()`` seconds. Both forms of the record (:class:`OutputRecord` and the
    batch job's Arrow columns, :func:`field_columns`) are built from this one dict."""
    now = time.time() if now is None else now
    return {"schema_version": SCHEMA_VERSION, "label": verdict.label, "score": round(verdict.score, 6),
            "topk": tuple((label, round(score, 6)) for label, score in verdict.topk), "action": decision.action,
            "adversarial_score": round(verdict.adversarial_score, 6),
            "suspected_adversarial": bool(verdict.suspected_adversarial), "method": verdict.method, "model": model,
            "policy_version": policy_version, "processed_at": datetime.fromtimestamp(now, UTC),
            "latency_ms": round(max(0.0, now - received_at) * 1000.0, 3), "review_reasons": decision.review_reasons,
            "frame": verdict.frame, "frame_count": verdict.frame_count,
            "decided_by": decided_by, "match": None if match is None else match.to_json()}


def match_fields(match: Match, decision: Decision, *, method: str, model: str, policy_version: str,
                 received_at: float, now: float | None = None) -> dict[str, Any]:
    """The record's own fields for an input routed on its bank hit alone (``matching.skip_model_on_match``): the
    label is the one the bank attaches, else the banked row's label, else the bank's name, at score 1; no detector
    ran (``adversarial_score`` 0)."""
    now = time.time() if now is None else now
    label = match.action if match.action not in ("allow", "review", "block") else match.label or match.bank
    return {"schema_version": SCHEMA_VERSION, "label": label, "score": 1.0, "topk": ((label, 1.0),),
            "action": decision.action, "adversarial_score": 0.0, "suspected_adversarial": False, "method": method,
            "model": model, "policy_version": policy_version, "processed_at": datetime.fromtimestamp(now, UTC),
            "latency_ms": round(max(0.0, now - received_at) * 1000.0, 3), "review_reasons": decision.review_reasons,
            "frame": 0, "frame_count": 1, "decided_by": "match", "match": match.to_json()}


def field_columns(rows: Sequence[Mapping[str, Any] | None]) -> dict[str, pa.Array]:
    """The :data:`FIELD_NAMES` columns of ``rows`` (each a dict of the record's own fields; ``None`` gives a null
    row, e.g. a dead letter's place in a batch)."""
    types = {f.name: f.type for f in ARROW_SCHEMA}
    values: dict[str, list[Any]] = {name: [] for name in FIELD_NAMES}
    for row in rows:
        for name in FIELD_NAMES:
            values[name].append(None if row is None else row[name])
    values["topk"] = [None if topk is None else [{"label": label, "score": score} for label, score in topk]
                      for topk in values["topk"]]
    values["review_reasons"] = [None if reasons is None else list(reasons) for reasons in values["review_reasons"]]
    values["match"] = [None if match is None else dict(match) for match in values["match"]]
    return {name: pa.array(values[name], type=types[name]) for name in FIELD_NAMES}


def to_columns(records: list[OutputRecord]) -> dict[str, pa.Array]:
    """The :data:`ARROW_SCHEMA` columns of ``records``."""
    columns = field_columns([{name: getattr(r, name) for name in FIELD_NAMES} for r in records])
    columns["id"] = pa.array([r.id for r in records], pa.string())
    columns["source"] = source_array([r.source for r in records])
    return {name: columns[name] for name in ARROW_SCHEMA.names}


class IdKeyedSerializer:
    """What the pipeline's record serializers share: JSON values keyed by the record's ``id``, and the headers
    naming the content type and schema version (plus ``record_type`` when set). Subclasses set the class
    attributes and write ``json_bytes`` / ``to_columns`` / ``passthrough``."""

    content_type: str = CONTENT_TYPE
    schema_version: str
    arrow_schema: pa.Schema
    record_type: str | None = None
    """``cola.record-type`` header value, for record types a topic may carry beside the output records."""

    def key(self, record: Any) -> str:
        key: str = record.id
        return key

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        headers = [("content-type", self.content_type.encode()), ("cola.schema-version", self.schema_version.encode())]
        return headers + ([("cola.record-type", self.record_type.encode())] if self.record_type else [])


class OutputSerializer(IdKeyedSerializer):
    """The :class:`~cola_moderation.connectors.base.RecordSerializer` of :class:`OutputRecord`."""

    schema_version = str(SCHEMA_VERSION)
    arrow_schema = ARROW_SCHEMA

    def json_bytes(self, record: OutputRecord) -> bytes:
        return dumps(record)

    def to_columns(self, records: list[OutputRecord]) -> dict[str, pa.Array]:
        return to_columns(records)

    def passthrough(self, record: OutputRecord) -> Mapping[str, Any]:
        return record.metadata


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of :meth:`OutputRecord.to_json`, as shipped in the package."""
    text = resources.files("cola_moderation.pipeline.runtime").joinpath("schemas", SCHEMA_FILE).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema
