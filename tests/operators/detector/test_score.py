from __future__ import annotations

import pytest
import torch

from cola_moderation.operators.config import DetectorConfig
from cola_moderation.operators.detector.score import AdversarialDetector, embedding_shift
from cola_moderation.operators.errors import ConfigError


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


def test_logit_is_the_bias_plus_the_weighted_terms_and_absent_signals_add_nothing() -> None:
    config = DetectorConfig(residual_weight=0.5, view_shift_weight=0.7, noise_shift_weight=2.0,
                            disagreement_weight=0.3, confidence_drop_weight=0.4, noise_shift_two_sided=True,
                            noise_shift_center=-10.0, noise_shift_scale=1.0, bias=-1.5)
    detector = AdversarialDetector(config)
    residual = torch.tensor([0.4, 0.6])
    clip = _probs([[0.9, 0.1], [0.3, 0.7]])
    cola = _probs([[0.2, 0.8], [0.3, 0.7]])
    noise = torch.tensor([torch.e ** -12.0, torch.e ** -9.0])
    kwargs = {"view_shift": torch.tensor([0.05, 0.01]), "noise_shift": noise, "cola_probs": cola}
    terms = detector.terms(residual, clip, **kwargs)
    assert set(terms) == {"residual", "view_shift", "noise_shift", "disagreement", "confidence_drop"}
    torch.testing.assert_close(terms["noise_shift"], torch.tensor([2.0, 1.0]))  # two-sided: |log shift - centre|
    torch.testing.assert_close(terms["disagreement"], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(terms["confidence_drop"], torch.tensor([0.7, 0.0]))
    weights = {"residual": 0.5, "view_shift": 0.7, "noise_shift": 2.0, "disagreement": 0.3, "confidence_drop": 0.4}
    expected = -1.5 + sum(weights[name] * term for name, term in terms.items())
    torch.testing.assert_close(detector.logit(residual, clip, **kwargs), expected)
    assert set(detector.terms(residual, clip)) == {"residual"}
    torch.testing.assert_close(detector.logit(residual, clip), -1.5 + 0.5 * terms["residual"])


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


def test_noise_shift_raises_the_score_on_a_log_scale() -> None:
    detector = AdversarialDetector(DetectorConfig())
    residual = torch.full((3,), 0.5)
    clip = _probs([[0.9, 0.1]] * 3)
    center = DetectorConfig().noise_shift_center
    shifts = torch.tensor([center - 3.0, center, center + 3.0]).exp()
    scores = detector.score(residual, clip, noise_shift=shifts)
    assert float(scores[0]) < float(scores[1]) < float(scores[2])
    # at the centre the noise signal adds nothing; half a scale above it, it alone reaches the default threshold
    torch.testing.assert_close(scores[1], detector.score(residual, clip)[1])
    edge = detector.score(residual[:1], clip[:1], noise_shift=torch.tensor([center + 0.5]).exp())
    torch.testing.assert_close(edge, torch.tensor([0.5]))
    # a zero shift (e.g. an image the noise cannot change) is finite, not -inf / NaN
    assert bool(torch.isfinite(detector.score(residual[:1], clip[:1], noise_shift=torch.zeros(1))).all())


def test_probe_noise_is_a_fixed_bounded_pattern_shared_by_every_image() -> None:
    detector = AdversarialDetector(DetectorConfig(noise_amplitude=4 / 255, noise_seed=3))
    pixels = torch.full((2, 3, 8, 8), 0.5)
    noisy = detector.noisy(pixels)
    assert float((noisy - pixels).abs().max()) <= 4 / 255 + 1e-7
    assert float((noisy - pixels).abs().max()) > 2 / 255
    torch.testing.assert_close(noisy[0], noisy[1])
    # the same pattern in a new detector with the same seed; a different one with another seed
    torch.testing.assert_close(AdversarialDetector(DetectorConfig(noise_seed=3)).noisy(pixels[:1]), noisy[:1])
    assert not torch.equal(AdversarialDetector(DetectorConfig(noise_seed=4)).noisy(pixels[:1]), noisy[:1])
    edges = detector.noisy(torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)]))
    assert float(edges.min()) == 0.0 and float(edges.max()) == 1.0


def test_embedding_shift_is_one_minus_cosine_and_resolves_small_shifts() -> None:
    a = torch.nn.functional.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    b = torch.nn.functional.normalize(a + 0.3 * torch.randn(4, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    torch.testing.assert_close(embedding_shift(a, b), 1.0 - (a * b).sum(-1), atol=1e-6, rtol=0)
    # a shift of ~1e-5 (clean images under the probe noise are near 3e-5) is resolved to within a few percent
    tiny = torch.nn.functional.normalize(a + 1e-3 * torch.randn(4, 16, generator=torch.Generator().manual_seed(2)),
                                         dim=-1)
    a64, tiny64 = a.double(), tiny.double()
    expected = 1.0 - (a64 * tiny64).sum(-1) / (a64.norm(dim=-1) * tiny64.norm(dim=-1))
    assert float(expected.max()) < 5e-5
    torch.testing.assert_close(embedding_shift(a, tiny).double(), expected, rtol=0.05, atol=0)


def test_probe_seed_from_the_environment_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from cola_moderation.operators.detector.score import seed_is_secret
    from cola_moderation.pipeline.cli.commands.eval import detector_section

    pixels = torch.full((1, 3, 8, 8), 0.5)
    config = DetectorConfig(noise_probe=True)
    public = AdversarialDetector(config).noisy(pixels)
    assert not seed_is_secret(config) and detector_section(config)["noise_seed"] == 0
    monkeypatch.setenv("COLA_DETECTOR_SEED", "98765")
    secret = AdversarialDetector(config)
    assert not torch.equal(secret.noisy(pixels), public) and seed_is_secret(config)
    assert detector_section(config)["noise_seed"] == "secret"
    guess = AdversarialDetector(config, noise_seed=0)  # an attacker's guess ignores the environment
    torch.testing.assert_close(guess.noisy(pixels), public)
    monkeypatch.setenv("COLA_DETECTOR_SEED", "not-a-number")
    with pytest.raises(ConfigError, match="COLA_DETECTOR_SEED") as caught:
        AdversarialDetector(config).noisy(pixels)
    assert "not-a-number" not in str(caught.value)


def test_two_sided_noise_probe_flags_too_stable_images_too() -> None:
    config = DetectorConfig(noise_probe=True, noise_shift_two_sided=True, noise_shift_center=-10.0,
                            noise_shift_scale=1.0, noise_shift_weight=2.0, bias=-3.0, threshold=0.5)
    detector = AdversarialDetector(config)
    shifts = torch.tensor([-10.0, -7.0, -13.0]).exp()  # at the centre, 3 sd more sensitive, 3 sd more stable
    scores = detector.score(torch.zeros(3), torch.full((3, 4), 0.25), noise_shift=shifts)
    torch.testing.assert_close(scores[1], scores[2])
    assert detector.flag(scores).tolist() == [False, True, True]
    one_sided = AdversarialDetector(config.model_copy(update={"noise_shift_two_sided": False}))
    assert one_sided.flag(one_sided.score(torch.zeros(3), torch.full((3, 4), 0.25), noise_shift=shifts)).tolist() \
        == [False, True, False]
