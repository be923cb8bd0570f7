from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.config import ColaConfig, DetectorConfig, TaxonomyConfig
from cola_moderation.operators.errors import ConfigError, DecodeError
from cola_moderation.operators.moderator import Moderation, Moderator

TAXONOMY = TaxonomyConfig(labels=["cat", "dog", "car"], templates=("a photo of a {}.", "a sketch of a {}."), top_k=2)


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("method", ["clip", "cola", "cascade"])
def test_every_method_returns_one_verdict_per_input(tiny_backbone: Backbone, method: str) -> None:
    moderator = Moderator(tiny_backbone, taxonomy=TAXONOMY, method=method)
    results = moderator.moderate([_png(0), b"not an image", _png(1)])
    assert isinstance(results[1], DecodeError)
    for result in (results[0], results[2]):
        assert isinstance(result, Moderation)
        assert result.method == method
        assert result.label in TAXONOMY.label_names and len(result.topk) == 2
        assert 0.0 <= result.adversarial_score <= 1.0
        assert result.cola_applied == (method == "cola") or method == "cascade"
    moderator.close()


def test_cascade_escalates_only_unsure_or_flagged_images(tiny_backbone: Backbone) -> None:
    pixels = torch.rand(8, 3, tiny_backbone.geometry.size, tiny_backbone.geometry.size,
                        generator=torch.Generator().manual_seed(0))
    never = Moderator(tiny_backbone, taxonomy=TAXONOMY, method="cascade", cola=ColaConfig(cascade_margin=0.0),
                      detector=DetectorConfig(enabled=False))
    clip = Moderator(tiny_backbone, taxonomy=TAXONOMY, method="clip")
    verdict = never.verdict(pixels)
    assert not bool(verdict.cola_applied.any())
    torch.testing.assert_close(verdict.scores.probs, clip.verdict(pixels).scores.probs)
    always = Moderator(tiny_backbone, taxonomy=TAXONOMY, method="cascade", cola=ColaConfig(cascade_margin=1.0),
                       detector=DetectorConfig(enabled=False))
    cola = Moderator(tiny_backbone, taxonomy=TAXONOMY, method="cola", detector=DetectorConfig(enabled=False))
    escalated = always.verdict(pixels)
    assert bool(escalated.cola_applied.all())
    torch.testing.assert_close(escalated.scores.probs, cola.verdict(pixels).scores.probs)
    # a mid margin escalates exactly the images whose CLIP margin is below it
    margins = clip.scores(pixels).margin()
    middle = float(margins.median())
    mixed = Moderator(tiny_backbone, taxonomy=TAXONOMY, method="cascade", cola=ColaConfig(cascade_margin=middle),
                      detector=DetectorConfig(enabled=False)).verdict(pixels)
    assert mixed.cola_applied.tolist() == (margins < middle).tolist()


def test_suspected_follows_the_threshold(tiny_backbone: Backbone) -> None:
    pixels = torch.rand(4, 3, tiny_backbone.geometry.size, tiny_backbone.geometry.size)
    everything = Moderator(tiny_backbone, taxonomy=TAXONOMY, method="cola", detector=DetectorConfig(threshold=0.0))
    assert bool(everything.verdict(pixels).suspected.all())
    nothing = Moderator(tiny_backbone, taxonomy=TAXONOMY, method="cola", detector=DetectorConfig(threshold=1.0))
    verdict = nothing.verdict(pixels)
    assert not bool(verdict.suspected.any())
    assert bool(((verdict.adversarial_scores >= 0) & (verdict.adversarial_scores < 1)).all())


def test_unknown_method_is_a_config_error(tiny_backbone: Backbone) -> None:
    with pytest.raises(ConfigError, match="method: must be one of clip, cola, cascade, got 'robust'"):
        Moderator(tiny_backbone, taxonomy=TAXONOMY, method="robust")


def test_probe_view_feeds_the_detector_and_is_reused(tiny_backbone: Backbone) -> None:
    pixels = torch.rand(6, 3, tiny_backbone.geometry.size, tiny_backbone.geometry.size,
                        generator=torch.Generator().manual_seed(1))
    with_probe = Moderator(tiny_backbone, taxonomy=TAXONOMY, method="cascade", cola=ColaConfig(cascade_margin=1.0),
                           detector=DetectorConfig(probe=True))
    without = Moderator(tiny_backbone, taxonomy=TAXONOMY, method="cascade", cola=ColaConfig(cascade_margin=1.0),
                        detector=DetectorConfig(probe=False))
    probed, plain = with_probe.verdict(pixels), without.verdict(pixels)
    # COLA's result is the same whether the probe view was encoded up front or by COLA itself
    torch.testing.assert_close(probed.scores.probs, plain.scores.probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(probed.adversarial_scores, plain.adversarial_scores, atol=1e-5, rtol=0)
    clip_only = Moderator(tiny_backbone, taxonomy=TAXONOMY, method="clip", detector=DetectorConfig(probe=True))
    assert not torch.allclose(clip_only.verdict(pixels).adversarial_scores,
                              Moderator(tiny_backbone, taxonomy=TAXONOMY, method="clip").verdict(pixels)
                              .adversarial_scores)


@pytest.mark.parametrize("method", ["clip", "cascade", "cola"])
def test_noise_probe_feeds_the_detector_whatever_the_batch(tiny_backbone: Backbone, method: str) -> None:
    pixels = torch.rand(5, 3, tiny_backbone.geometry.size, tiny_backbone.geometry.size,
                        generator=torch.Generator().manual_seed(2))
    probed = Moderator(tiny_backbone, taxonomy=TAXONOMY, method=method, detector=DetectorConfig(noise_probe=True))
    plain = Moderator(tiny_backbone, taxonomy=TAXONOMY, method=method, detector=DetectorConfig(noise_probe=False))
    verdict = probed.verdict(pixels)
    assert not torch.allclose(verdict.adversarial_scores, plain.verdict(pixels).adversarial_scores)
    # an image's score does not depend on which batch it arrived in (the noise pattern is per image size)
    alone = torch.cat([probed.verdict(pixels[i : i + 1]).adversarial_scores for i in range(5)])
    torch.testing.assert_close(alone, verdict.adversarial_scores, atol=1e-5, rtol=0)


def test_a_long_call_decodes_ahead_in_chunks_and_answers_as_one_batch_would(tiny_backbone: Backbone) -> None:
    import threading

    from cola_moderation.operators.moderator import DECODE_AHEAD_MIN

    items = [b"not an image" if i % 7 == 0 else _png(i) for i in range(37)]
    moderator = Moderator(tiny_backbone, taxonomy=TAXONOMY, method="cascade")
    moderator.batch_size = 20  # chunks of max(DECODE_AHEAD_MIN, 10) inputs: 10, 10, 10, 7
    whole = moderator.moderate_decoded(moderator.decoder.decode(items), len(items))
    decode = moderator.decoder.decode
    calls: list[tuple[int, str]] = []

    def recording(part, **options):  # type: ignore[no-untyped-def]
        calls.append((len(part), threading.current_thread().name))
        return decode(part, **options)

    moderator.decoder.decode = recording  # type: ignore[method-assign]
    chunked = moderator.moderate(items)
    assert [size for size, _ in calls] == [10, 10, 10, 7] and DECODE_AHEAD_MIN <= 10
    assert all(name.startswith("cola-decode-ahead") for _, name in calls)
    assert len(chunked) == len(items)
    for index, (got, want) in enumerate(zip(chunked, whole, strict=True)):
        assert isinstance(got, DecodeError) == (index % 7 == 0), index
        if isinstance(want, Moderation):
            assert isinstance(got, Moderation)
            assert (got.label, got.cola_applied, got.suspected_adversarial) == (
                want.label, want.cola_applied, want.suspected_adversarial), index
            assert got.score == pytest.approx(want.score, abs=1e-5)
            assert got.adversarial_score == pytest.approx(want.adversarial_score, abs=1e-5)
    # a short call decodes in one go, on the caller's thread
    calls.clear()
    moderator.moderate(items[: 2 * DECODE_AHEAD_MIN - 1])
    assert calls == [(2 * DECODE_AHEAD_MIN - 1, threading.current_thread().name)]
    moderator.close()
