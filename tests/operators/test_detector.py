from __future__ import annotations

import torch

from operators.config import DetectorConfig
from operators.detector import AdversarialDetector


def _probs(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows)


RESIDUAL = DetectorConfig(residual_weight=1.0, residual_center=0.5, residual_scale=0.1, bias=-2.0)


def test_scores_rise_with_residual_energy() -> None:
    detector = AdversarialDetector(RESIDUAL)
    clip = _probs([[0.9, 0.1]] * 3)
    scores = detector.score(torch.tensor([0.2, 0.5, 0.9]), clip)
    assert scores.shape == (3,)
    assert bool((scores[1:] > scores[:-1]).all())
    assert bool(((scores >= 0) & (scores <= 1)).all())


def test_cola_disagreement_and_confidence_drop_raise_the_score() -> None:
    detector = AdversarialDetector(DetectorConfig())
    residual = torch.full((3,), 0.5)
    clip = _probs([[0.9, 0.1]] * 3)
    cola = _probs([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    scores = detector.score(residual, clip, cola_probs=cola)
    assert float(scores[0]) < float(scores[1]) < float(scores[2])
    # agreement with no confidence change adds nothing to the single-pass score
    torch.testing.assert_close(scores[0], detector.score(residual, clip)[0])


def test_threshold_and_disable() -> None:
    residual = torch.tensor([0.0, 1.0])
    clip = _probs([[0.9, 0.1]] * 2)
    detector = AdversarialDetector(RESIDUAL)
    flags = detector.flag(detector.score(residual, clip))
    assert flags.tolist() == [False, True]
    off = AdversarialDetector(RESIDUAL.model_copy(update={"enabled": False}))
    assert off.score(residual, clip).tolist() == [0.0, 0.0]
    assert off.flag(off.score(residual, clip)).tolist() == [False, False]


def test_view_shift_raises_the_score() -> None:
    detector = AdversarialDetector(DetectorConfig())
    residual = torch.full((2,), 0.5)
    clip = _probs([[0.9, 0.1]] * 2)
    scores = detector.score(residual, clip, view_shift=torch.tensor([0.01, 0.3]))
    assert float(scores[0]) < float(detector.score(residual, clip)[0]) < float(scores[1])
    # the probe's single-view shift is a smaller statistic, so it is centred lower
    probe = detector.score(residual, clip, probe_shift=torch.tensor([0.05, 0.05]))
    full = detector.score(residual, clip, view_shift=torch.tensor([0.05, 0.05]))
    assert bool((probe > full).all())
    clean_like = detector.score(residual, clip)
    assert not bool(detector.flag(clean_like).any())


def test_default_residual_signal_is_off() -> None:
    detector = AdversarialDetector()
    clip = _probs([[0.9, 0.1]] * 2)
    scores = detector.score(torch.tensor([0.0, 1.0]), clip)
    assert float(scores[0]) == float(scores[1])
