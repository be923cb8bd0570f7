"""Output records: the documented, versioned shape every route carries (Kafka JSON value, Parquet row, HTTP body).

Schema version 1 fields (see README "Output records"):
``schema_version, id, label, score, topk[{label, score}], action, adversarial_score, suspected_adversarial, method,
model, policy_version, source{topic, partition, offset | file, row}, processed_at (ISO 8601 UTC), latency_ms,
metadata{...passthrough...}``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from cola_moderation.connectors.records import InputRecord
from cola_moderation.operators.moderator import Moderation
from cola_moderation.operators.policy import Decision

SCHEMA_VERSION = 1


def output_record(record: InputRecord, verdict: Moderation, decision: Decision, *, model: str, policy_version: str,
                  received_at: float, now: float | None = None) -> dict[str, Any]:
    """Assemble the output record of one input. ``received_at``/``now`` are ``time.time()`` seconds."""
    now = time.time() if now is None else now
    return {
        "schema_version": SCHEMA_VERSION,
        "id": record.id,
        "label": verdict.label,
        "score": round(verdict.score, 6),
        "topk": verdict.topk_records(),
        "action": decision.action,
        "adversarial_score": round(verdict.adversarial_score, 6),
        "suspected_adversarial": verdict.suspected_adversarial,
        "method": verdict.method,
        "model": model,
        "policy_version": policy_version,
        "source": record.source.as_dict(),
        "processed_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
        "latency_ms": round(max(0.0, now - received_at) * 1000.0, 3),
        "metadata": dict(record.metadata),
    }
