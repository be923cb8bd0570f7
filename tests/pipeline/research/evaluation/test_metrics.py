from __future__ import annotations

import math

import pytest
import torch

from cola_moderation.pipeline.research.evaluation.metrics import accuracy, auroc, tpr_at_fpr


def brute_force_auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    greater = (positives[:, None] > negatives[None, :]).double().mean()
    ties = (positives[:, None] == negatives[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def test_auroc_matches_pair_counting_with_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    negatives = torch.randint(0, 12, (301,), generator=generator).float()
    positives = torch.randint(3, 15, (157,), generator=generator).float()
    assert auroc(negatives, positives) == pytest.approx(brute_force_auroc(negatives, positives), abs=1e-12)


def test_auroc_extremes_and_empty() -> None:
    low, high = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.6, 0.9])
    assert auroc(low, high) == 1.0
    assert auroc(high, low) == 0.0
    assert auroc(low, low) == 0.5
    assert math.isnan(auroc(torch.tensor([]), high))


def test_tpr_at_fpr_uses_the_strictest_threshold_within_the_budget() -> None:
    negatives = torch.arange(100).float()  # 5% FPR allows 5 negatives above the threshold: 95..99, threshold 94
    positives = torch.tensor([94.5, 96.0, 50.0, 94.0])
    assert tpr_at_fpr(negatives, positives, 0.05) == 0.5
    assert tpr_at_fpr(negatives, torch.tensor([100.0]), 0.0) == 1.0
    assert tpr_at_fpr(negatives, torch.tensor([99.0]), 0.0) == 0.0


def test_tpr_at_fpr_never_exceeds_the_false_positive_budget_with_ties() -> None:
    generator = torch.Generator().manual_seed(1)
    negatives = torch.randint(0, 5, (200,), generator=generator).float()
    allowed = math.floor(0.05 * 200)
    threshold = negatives.sort(descending=True).values[allowed]
    assert int((negatives > threshold).sum()) <= allowed
    # every negative value reused as a positive: flagged exactly when above the threshold
    assert tpr_at_fpr(negatives, negatives, 0.05) == pytest.approx(float((negatives > threshold).double().mean()))
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr(negatives, negatives, 1.0)


def test_accuracy() -> None:
    assert accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 0])) == 0.5
    assert math.isnan(accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)))
    with pytest.raises(ValueError, match="differ"):
        accuracy(torch.tensor([1, 2]), torch.tensor([1]))
