from __future__ import annotations

import pytest
from pydantic import ValidationError

from cola_moderation.operators.policy import LabelRule, Policy, PolicyConfig, audit_sampled

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


def test_review_band_sends_the_band_to_review() -> None:
    policy = Policy(PolicyConfig(rules={"weapons": LabelRule(review_band=(0.4, 0.8), block=0.9)}))
    inside = policy.decide([("weapons", 0.4), ("safe", 0.3)], suspected_adversarial=False)
    assert (inside.action, inside.quarantine, inside.review_reasons) == ("review", True, ("band:weapons:[0.4,0.8)",))
    below = policy.decide([("safe", 0.7), ("weapons", 0.39)], suspected_adversarial=False)
    above = policy.decide([("weapons", 0.8), ("safe", 0.2)], suspected_adversarial=False)
    assert (below.action, below.review_reasons) == ("allow", ())
    assert (above.action, above.review_reasons) == ("allow", ())  # the band is half-open; block starts at 0.9
    both = policy.decide([("weapons", 0.5)], suspected_adversarial=True, record_id="x")
    assert both.review_reasons == ("band:weapons:[0.4,0.8)", "suspected_adversarial")
    with pytest.raises(ValidationError, match="low < high"):
        LabelRule(review_band=(0.8, 0.4))


def test_review_reasons_name_rules_and_not_blocks() -> None:
    decision = POLICY.decide([("safe", 0.6), ("weapons", 0.35)], suspected_adversarial=False)
    assert decision.review_reasons == ("rule:weapons>=0.3",)
    blocked = POLICY.decide([("weapons", 0.85)], suspected_adversarial=False)
    assert (blocked.action, blocked.review_reasons) == ("block", ())


AUDIT_IDS = [f"upload-{i}" for i in range(10_000)]


@pytest.mark.parametrize("share", [0.01, 0.1])
def test_audit_sample_is_deterministic_and_about_the_share(share: float) -> None:
    config = PolicyConfig(audit_sample=share, audit_salt="salt-a")
    first = [Policy(config).decide([("safe", 0.99)], suspected_adversarial=False, record_id=i) for i in AUDIT_IDS]
    again = [Policy(config).decide([("safe", 0.99)], suspected_adversarial=False, record_id=i) for i in AUDIT_IDS]
    sampled = {i for i, d in zip(AUDIT_IDS, first, strict=True) if d.review_reasons == ("audit_sample",)}
    assert sampled == {i for i, d in zip(AUDIT_IDS, again, strict=True) if "audit_sample" in d.review_reasons}
    assert all(d.action == "review" and d.quarantine for i, d in zip(AUDIT_IDS, first, strict=True) if i in sampled)
    # Binomial(10,000, share) 99% interval (normal approximation, z = 2.576).
    n = len(AUDIT_IDS)
    half_width = 2.576 * (n * share * (1 - share)) ** 0.5
    assert abs(len(sampled) - n * share) <= half_width, (len(sampled), n * share, half_width)
    # Another salt draws another sample of about the same size; no id, no audit.
    other = {i for i in AUDIT_IDS if audit_sampled(i, share=share, salt="salt-b")}
    assert other != sampled and abs(len(other) - n * share) <= half_width
    assert Policy(config).decide([("safe", 0.99)], suspected_adversarial=False).action == "allow"


def test_audit_sample_zero_and_one() -> None:
    assert not any(audit_sampled(i, share=0.0, salt="s") for i in AUDIT_IDS[:1000])
    assert all(audit_sampled(i, share=1.0, salt="s") for i in AUDIT_IDS[:1000])


def test_policy_config_names_bad_keys() -> None:
    with pytest.raises(ValidationError, match="audit_sampel"):
        PolicyConfig.model_validate({"audit_sampel": 0.1})
    with pytest.raises(ValidationError, match="audit_sample"):
        PolicyConfig.model_validate({"audit_sample": 1.5})
    with pytest.raises(ValidationError, match="review_band"):
        PolicyConfig.model_validate({"rules": {"weapons": {"review_band": [0.9, 0.2]}}})
def test_bank_matches_escalate_through_the_policy() -> None:
    from cola_moderation.operators.policy import Decision

    policy = Policy(PolicyConfig(rules={"weapon": LabelRule(block=0.9)}, quarantine_actions=("review",)))
    allowed = Decision(action="allow", quarantine=False, reasons=())
    blocked = policy.with_match(allowed, bank="known", action="block")
    assert (blocked.action, blocked.quarantine, blocked.reasons) == ("block", False, ("match:known",))
    reviewed = policy.with_match(None, bank="seen", action="review")
    assert (reviewed.action, reviewed.quarantine) == ("review", True)
    # A bank that attaches a label: that label's rule applies at score 1.
    assert policy.with_match(None, bank="lbl", action="weapon").action == "block"
    assert policy.with_match(None, bank="lbl", action="unruled").action == "allow"
    # The strictest action wins: an allow bank does not relax the model's block.
    model_block = Decision(action="block", quarantine=False, reasons=("weapon>=0.9",))
    assert policy.with_match(model_block, bank="ok", action="allow").action == "block"
