"""Moderation policy: a verdict (label scores, adversarial flag) -> an action and a route.

Actions are ordered ``allow < review < block``; the strictest rule that fires wins. Per-label rules compare the
label's probability among the record's ``topk`` with ``review`` / ``block`` thresholds; a suspected adversarial
upload gets ``adversarial_action`` (``review`` by default). Actions listed in ``quarantine_actions`` go to the
quarantine route (a review queue); the others to the output route.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, model_validator

from cola_moderation.operators.config import Section

Action = Literal["allow", "review", "block"]
SEVERITY: dict[str, int] = {"allow": 0, "review": 1, "block": 2}


class LabelRule(Section):
    """Thresholds on one label's probability."""

    review: Annotated[float, Field(ge=0, le=1)] | None = None
    block: Annotated[float, Field(ge=0, le=1)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> LabelRule:
        if self.review is not None and self.block is not None and self.block < self.review:
            raise ValueError(f"block ({self.block}) must be >= review ({self.review})")
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

    def check_labels(self, labels: Iterable[str]) -> None:
        unknown = sorted(set(self.rules) - set(labels))
        if unknown:
            raise ValueError(f"rules name labels that are not in the taxonomy: {unknown}")


@dataclass(frozen=True)
class Decision:
    action: Action
    quarantine: bool
    reasons: tuple[str, ...]


class Policy:
    """Applies a :class:`PolicyConfig` to verdicts."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    @property
    def version(self) -> str:
        return self.config.version

    def decide(self, topk: Iterable[tuple[str, float]], *, suspected_adversarial: bool) -> Decision:
        action: Action = self.config.default_action
        reasons: list[str] = []

        def escalate(candidate: Action, reason: str) -> None:
            nonlocal action
            reasons.append(reason)
            if SEVERITY[candidate] > SEVERITY[action]:
                action = candidate

        for label, score in topk:
            rule = self.config.rules.get(label)
            if rule is None:
                continue
            if rule.block is not None and score >= rule.block:
                escalate("block", f"{label}>={rule.block}")
            elif rule.review is not None and score >= rule.review:
                escalate("review", f"{label}>={rule.review}")
        if suspected_adversarial:
            escalate(self.config.adversarial_action, "suspected_adversarial")
        return Decision(action=action, quarantine=action in self.config.quarantine_actions, reasons=tuple(reasons))
