"""Statements of reasons (EU DSA Art. 17 / 24(5)) from decision records, in the field names and values of the DSA
Transparency Database's submission API (https://transparency.dsa.ec.europa.eu/page/api-documentation).

One statement per reviewed id whose final decision restricts the upload: the newest decision (any reviewer) is
``adversarial``, or its final label has a ``block`` rule in the policy; and one per upload the policy blocked with no
human involved (``action`` ``block`` on the output route of a ``cola batch`` dataset, not reviewed since), with
``automated_decision`` ``AUTOMATED_DECISION_FULLY``. ``automated_detection`` is ``Yes`` when a model
condition sent the record to review (not only the audit sample); ``automated_decision`` maps the record's
``none | partial | full`` to ``AUTOMATED_DECISION_NOT_AUTOMATED | _PARTIALLY | _FULLY``. Fields a moderation
pipeline cannot know (the account, the territorial scope, the legal ground of illegal content) are left to the
platform that submits them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cola_moderation.operators.policy import PolicyConfig
from cola_moderation.pipeline.runtime.decisions import DecisionRecord
from cola_moderation.pipeline.runtime.records import OutputRecord

AUTOMATED_DECISION = {"none": "AUTOMATED_DECISION_NOT_AUTOMATED", "partial": "AUTOMATED_DECISION_PARTIALLY",
                      "full": "AUTOMATED_DECISION_FULLY"}


def restricts(record: DecisionRecord, policy: PolicyConfig) -> bool:
    """Whether the decision restricts the upload (so the uploader is owed a statement of reasons)."""
    if record.decision == "adversarial":
        return True
    if record.decision == "allow" or record.final_label is None:
        return False
    rule = policy.rules.get(record.final_label)
    return rule is not None and rule.block is not None


def statement(record: DecisionRecord, *, platform: str) -> dict[str, Any]:
    """The statement of reasons for one restricting decision."""
    if record.decision == "adversarial":
        ground = "adversarially manipulated upload (evasion of automated moderation)"
    else:
        ground = f"content labelled {record.final_label!r} under moderation policy {record.policy_version}"
    facts = (f"Reviewed by a human moderator ({record.decision}, revision {record.revision}); automated label "
             f"{record.original_label!r} at {record.original_score:.3f}, adversarial score "
             f"{record.adversarial_score:.3f}; sent to review by: {', '.join(record.review_reasons) or 'n/a'}.")
    if record.note:
        facts += f" Note: {record.note}"
    return {
        "puid": record.id,
        "platform_name": platform,
        "decision_visibility": ["DECISION_VISIBILITY_CONTENT_REMOVED"],
        "decision_ground": "DECISION_GROUND_INCOMPATIBLE_CONTENT",
        "incompatible_content_ground": ground,
        "incompatible_content_explanation": facts,
        "category": "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE",
        "content_type": ["CONTENT_TYPE_IMAGE"],
        "decision_facts": facts,
        "source_type": "SOURCE_VOLUNTARY",
        "automated_detection": "Yes" if record.automated_detection != "none" else "No",
        "automated_decision": AUTOMATED_DECISION[record.automated_decision],
        "content_date": record.processed_at.date().isoformat(),
        "application_date": record.decided_at.date().isoformat(),
        "decision_id": record.decision_id,
    }


def statements(records: Iterable[DecisionRecord], policy: PolicyConfig, *, platform: str) -> list[dict[str, Any]]:
    """Statements for the newest decision per id, where it restricts the upload (oldest decision first)."""
    newest: dict[str, DecisionRecord] = {}
    for record in sorted(records, key=lambda r: (r.decided_at, r.revision)):
        newest[record.id] = record
    chosen = sorted(newest.values(), key=lambda r: r.decided_at)
    return [statement(r, platform=platform) for r in chosen if restricts(r, policy)]


def automated_statement(record: OutputRecord, *, platform: str) -> dict[str, Any]:
    """The statement of reasons for an upload the policy blocked on its own."""
    facts = (f"Blocked automatically by moderation policy {record.policy_version}: label {record.label!r} at "
             f"{record.score:.3f} ({record.method}, model {record.model}).")
    return {
        "puid": record.id,
        "platform_name": platform,
        "decision_visibility": ["DECISION_VISIBILITY_CONTENT_REMOVED"],
        "decision_ground": "DECISION_GROUND_INCOMPATIBLE_CONTENT",
        "incompatible_content_ground": f"content labelled {record.label!r} under moderation policy "
                                       f"{record.policy_version}",
        "incompatible_content_explanation": facts,
        "category": "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE",
        "content_type": ["CONTENT_TYPE_IMAGE"],
        "decision_facts": facts,
        "source_type": "SOURCE_VOLUNTARY",
        "automated_detection": "Yes",
        "automated_decision": AUTOMATED_DECISION["full"],
        "content_date": record.processed_at.date().isoformat(),
        "application_date": record.processed_at.date().isoformat(),
    }


def automated_statements(records: Iterable[OutputRecord], reviewed: set[str], *,
                         platform: str) -> list[dict[str, Any]]:
    """Statements for the blocked ``records`` that no reviewer decided since."""
    return [automated_statement(r, platform=platform) for r in records if r.action == "block" and r.id not in reviewed]
