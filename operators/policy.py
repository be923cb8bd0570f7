"""Moderation policy: a verdict (label scores, adversarial flag) -> an action and a route.

Actions are ordered ``allow < review < block``; the strictest rule that fires wins. Per-label rules compare the
label's probability among the record's ``topk`` with ``review`` / ``block`` thresholds; a suspected adversarial
upload gets ``adversarial_action`` (``review`` by default). Actions listed in ``quarantine_actions`` go to the
quarantine route (a review queue); the others to the output route.

Review routing (human review, in the manner of Amazon A2I's activation conditions): a rule's ``review_band``
``[low, high)`` sends a record to ``review`` when the label's probability lies in the band, and ``audit_sample``
sends that share of all records to ``review`` whatever they scored, chosen by a salted hash of the record's id (the
same id is always in or out, so a rerun samples the same records). :attr:`Decision.review_reasons` says which
conditions asked for review: ``band:<label>:[low,high)``, ``rule:<label>>=<t>``, ``suspected_adversarial``,
``audit_sample``.

A hash-bank match (:meth:`Policy.with_match`) escalates the same way: the bank's ``allow`` / ``review`` / ``block``,
or the policy's rule for the label the bank attaches, taken at score 1 (review reason ``match:<bank>``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol, TypeVar

from pydantic import Field, model_validator

from cola_moderation.operators.config import Section

Action = Literal["allow", "review", "block"]
SEVERITY: dict[str, int] = {"allow": 0, "review": 1, "block": 2}


class LabelRule(Section):
    """Thresholds on one label's probability."""

    review: Annotated[float, Field(ge=0, le=1)] | None = None
    block: Annotated[float, Field(ge=0, le=1)] | None = None
    review_band: tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]] | None = None
    """``[low, high)``: ``review`` when the label's probability is at least ``low`` and below ``high`` (a label
    outside the record's top-k counts as below every band)."""

    @model_validator(mode="after")
    def _ordered(self) -> LabelRule:
        if self.review is not None and self.block is not None and self.block < self.review:
            raise ValueError(f"block ({self.block}) must be >= review ({self.review})")
        if self.review_band is not None and not self.review_band[0] < self.review_band[1]:
            raise ValueError(f"review_band {list(self.review_band)} must be [low, high) with low < high")
        return self


class PolicyConfig(Section):
    """``policy:`` section."""

    version: Annotated[str, Field(min_length=1)] = "default-1"
    """Written into every record, so downstream consumers know which rules produced an action."""
    rules: dict[str, LabelRule] = Field(default_factory=dict)
    """label -> thresholds. Labels must exist in the taxonomy."""
    default_action: Action = "allow"
    adversarial_action: Action = "review"
    quarantine_actions: tuple[Action, ...] = ("review",)
    audit_sample: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Share of all records sent to ``review`` for audit, chosen by :func:`audit_sampled` (deterministic per id)."""
    audit_salt: Annotated[str, Field(min_length=1)] = "cola-audit-1"
    """Salt of the audit sample's hash: change it to draw a new sample; keep it private so uploaders cannot tell
    which ids are audited."""

    def check_labels(self, labels: Iterable[str]) -> None:
        unknown = sorted(set(self.rules) - set(labels))
        if unknown:
            raise ValueError(f"rules name labels that are not in the taxonomy: {unknown}")


@dataclass(frozen=True)
class Decision:
    action: Action
    quarantine: bool
    reasons: tuple[str, ...]
    review_reasons: tuple[str, ...] = ()
    """The conditions that asked for ``review`` (see the module docstring), whatever the final action."""


def audit_fraction(record_id: str, salt: str) -> float:
    """Where ``record_id`` falls in [0, 1): the first 8 bytes of SHA-256(salt NUL id) over 2^64."""
    digest = hashlib.sha256(salt.encode() + b"\0" + record_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def audit_sampled(record_id: str, *, share: float, salt: str) -> bool:
    """Whether ``record_id`` is in the audit sample of ``share`` (the same answer for the same id and salt)."""
    return share > 0 and audit_fraction(record_id, salt) < share


class Verdict(Protocol):
    """What the policy reads of a verdict (:class:`~cola_moderation.operators.moderator.Moderation`)."""

    @property
    def topk(self) -> tuple[tuple[str, float], ...]: ...

    @property
    def suspected_adversarial(self) -> bool: ...

    @property
    def frames(self) -> Sequence[Verdict]: ...


V = TypeVar("V", bound=Verdict)


class Policy:
    """Applies a :class:`PolicyConfig` to verdicts."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    @property
    def version(self) -> str:
        return self.config.version

    def decide(self, topk: Iterable[tuple[str, float]], *, suspected_adversarial: bool,
               record_id: str | None = None) -> Decision:
        """The decision for one verdict; ``record_id`` takes part in the audit sample (none without it)."""
        action: Action = self.config.default_action
        reasons: list[str] = []
        review_reasons: list[str] = []

        def escalate(candidate: Action, reason: str) -> None:
            nonlocal action
            reasons.append(reason)
            if candidate == "review":
                review_reasons.append(reason)
            if SEVERITY[candidate] > SEVERITY[action]:
                action = candidate

        for label, score in topk:
            rule = self.config.rules.get(label)
            if rule is None:
                continue
            if rule.block is not None and score >= rule.block:
                escalate("block", f"{label}>={rule.block}")
            elif rule.review is not None and score >= rule.review:
                escalate("review", f"rule:{label}>={rule.review}")
            if rule.review_band is not None and rule.review_band[0] <= score < rule.review_band[1]:
                low, high = rule.review_band
                escalate("review", f"band:{label}:[{low},{high})")
        if suspected_adversarial:
            escalate(self.config.adversarial_action, "suspected_adversarial")
        if record_id is not None and audit_sampled(record_id, share=self.config.audit_sample,
                                                   salt=self.config.audit_salt):
            escalate("review", "audit_sample")
        return Decision(action=action, quarantine=action in self.config.quarantine_actions, reasons=tuple(reasons),
                        review_reasons=tuple(review_reasons))

    def decide_frames(self, verdict: V, *, record_id: str | None = None) -> tuple[V, Decision]:
        """The deciding frame of ``verdict`` and its decision: for an animated input (``verdict.frames``) the frame
        with the strictest action (the first of equals), so one frame that triggers a rule moderates the whole
        input; a still image is its own deciding frame."""
        frames: Sequence[V] = verdict.frames or (verdict,)  # type: ignore[assignment]
        first = frames[0]
        best = (first, self.decide(first.topk, suspected_adversarial=first.suspected_adversarial, record_id=record_id))
        for frame in frames[1:]:
            decision = self.decide(frame.topk, suspected_adversarial=frame.suspected_adversarial, record_id=record_id)
            if SEVERITY[decision.action] > SEVERITY[best[1].action]:
                best = (frame, decision)
        return best

    def with_match(self, decision: Decision | None, *, bank: str, action: str) -> Decision:
        """``decision`` (the model's; ``None`` when the model was skipped) escalated by a match in ``bank``, whose
        ``action`` is ``allow`` / ``review`` / ``block`` or a label to attach (its rule applies at score 1; a label
        without a rule adds nothing beyond ``default_action``). The strictest action wins."""
        if action in SEVERITY:
            bank_action: Action = action  # type: ignore[assignment]
            reasons: tuple[str, ...] = (f"match:{bank}",)
        else:
            by_label = self.decide([(action, 1.0)], suspected_adversarial=False)
            bank_action, reasons = by_label.action, (f"match:{bank}", *by_label.reasons)
        base = decision.action if decision is not None else self.config.default_action
        final: Action = bank_action if SEVERITY[bank_action] > SEVERITY[base] else base
        prior = decision.reasons if decision is not None else ()
        review = decision.review_reasons if decision is not None else ()
        if bank_action == "review":
            review = (*review, f"match:{bank}")
        return Decision(action=final, quarantine=final in self.config.quarantine_actions, reasons=(*prior, *reasons),
                        review_reasons=review)
