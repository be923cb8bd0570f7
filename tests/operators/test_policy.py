from __future__ import annotations

import pytest
from pydantic import ValidationError

from cola_moderation.operators.policy import LabelRule, Policy, PolicyConfig

POLICY = Policy(PolicyConfig(version="p7", rules={"weapons": LabelRule(review=0.3, block=0.8),
                                                  "nudity": LabelRule(block=0.5)}))


@pytest.mark.parametrize(
    ("topk", "adversarial", "action", "quarantine"),
    [
        ([("safe", 0.9), ("weapons", 0.1)], False, "allow", False),
        ([("safe", 0.6), ("weapons", 0.35)], False, "review", True),
        ([("weapons", 0.85), ("safe", 0.1)], False, "block", False),
        ([("safe", 0.45), ("nudity", 0.5)], False, "block", False),
        ([("safe", 0.95)], True, "review", True),
        ([("weapons", 0.9)], True, "block", False),  # the strictest action wins
    ],
)
def test_actions(topk: list[tuple[str, float]], adversarial: bool, action: str, quarantine: bool) -> None:
    decision = POLICY.decide(topk, suspected_adversarial=adversarial)
    assert (decision.action, decision.quarantine) == (action, quarantine)
    assert bool(decision.reasons) == (action != "allow")


def test_quarantine_actions_are_configurable() -> None:
    policy = Policy(PolicyConfig(rules={"weapons": LabelRule(block=0.5)}, quarantine_actions=("review", "block")))
    assert policy.decide([("weapons", 0.7)], suspected_adversarial=False).quarantine


def test_rule_validation() -> None:
    with pytest.raises(ValidationError, match="block"):
        LabelRule(review=0.8, block=0.5)
    with pytest.raises(ValueError, match=r"not in the taxonomy: \['gunz'\]"):
        PolicyConfig(rules={"gunz": LabelRule(block=0.5)}).check_labels(["guns", "safe"])
