"""Metrics of the robustness report: accuracy, detector AUROC and TPR at a fixed false-positive rate.

Detector metrics treat clean images as negatives and their attacked copies as positives; higher score = more
suspicious. All functions take 1-D tensors and return plain floats in [0, 1] (NaN when undefined, e.g. no
negatives), so the report stays JSON-serialisable.
"""

from __future__ import annotations

import math

import torch


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``predicted`` ``[N]`` equal to ``labels`` ``[N]`` (NaN for N = 0)."""
    if predicted.shape != labels.shape:
        raise ValueError(f"accuracy: predicted {tuple(predicted.shape)} and labels {tuple(labels.shape)} differ")
    if predicted.numel() == 0:
        return math.nan
    return float((predicted.cpu() == labels.cpu()).double().mean())


def auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve: P(random positive scores above random negative), ties counted half.

    Computed from ranks (Mann-Whitney U) in O((n + m) log(n + m)), so 10,000 x 10,000 pairs are cheap.
    """
    neg, pos = negatives.detach().double().flatten().cpu(), positives.detach().double().flatten().cpu()
    if neg.numel() == 0 or pos.numel() == 0:
        return math.nan
    scores = torch.cat([neg, pos])
    order = scores.argsort()
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    # average ranks over ties
    _, inverse, counts = torch.unique(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    rank_sum = ranks[neg.numel():].sum()
    n_pos, n_neg = pos.numel(), neg.numel()
    u = rank_sum - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def tpr_at_fpr(negatives: torch.Tensor, positives: torch.Tensor, fpr: float = 0.05) -> float:
    """True-positive rate at the strictest threshold whose false-positive rate on ``negatives`` is <= ``fpr``.

    The threshold t is the (floor(fpr * n) + 1)-th largest negative score; a score counts as flagged when > t, so
    at most floor(fpr * n) negatives are flagged (ties never push the FPR above ``fpr``).
    """
    if not 0 <= fpr < 1:
        raise ValueError(f"tpr_at_fpr: fpr must be in [0, 1), got {fpr}")
    neg, pos = negatives.detach().double().flatten().cpu(), positives.detach().double().flatten().cpu()
    if neg.numel() == 0 or pos.numel() == 0:
        return math.nan
    allowed = math.floor(fpr * neg.numel())
    threshold = neg.sort(descending=True).values[allowed]
    return float((pos > threshold).double().mean())


def wilson_interval(successes: int, total: int, *, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion ``successes / total`` (NaNs for ``total = 0``)."""
    if total <= 0:
        return math.nan, math.nan
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
