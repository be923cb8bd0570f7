"""Frame sampling of animated and multi-page images, and the policy's deciding frame."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.decode import ImageDecoder, decode_frames
from cola_moderation.operators.errors import DecodeError
from cola_moderation.operators.frames import sample_frames, webp_durations
from cola_moderation.operators.moderator import Moderation
from cola_moderation.operators.policy import LabelRule, Policy, PolicyConfig

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (128, 128, 128),
           (255, 255, 255), (0, 0, 0), (255, 128, 0)]


def animation(fmt: str, durations: list[int], size: int = 32) -> bytes:
    """One solid colour per frame (COLOURS in order), shown for ``durations`` ms each."""
    frames = [Image.new("RGB", (size, size), COLOURS[i % len(COLOURS)]) for i in range(len(durations))]
    buffer = io.BytesIO()
    extra = {} if fmt == "TIFF" else {"duration": durations, "loop": 0}
    if fmt == "WEBP":
        extra["lossless"] = True
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], **extra)
    return buffer.getvalue()


def colour_of(array: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(c) for c in array[:, 4, 4])
    return r, g, b


def test_sample_frames_picks_first_longest_last_then_evenly_spaced() -> None:
    assert sample_frames(3, [10, 20, 30], 8) == (0, 1, 2)  # fewer than max_frames: all
    durations = [20.0] * 100
    durations[37] = 4000.0
    picked = sample_frames(100, durations, 4)
    assert len(picked) == 4 and {0, 37, 99} <= set(picked)
    assert sample_frames(100, [None] * 100, 5) == (0, 25, 50, 74, 99)  # no durations: first, last, evenly spaced
    assert sample_frames(100, durations, 1) == (0,)
    assert sample_frames(100, durations, 2) == (0, 37)
    # the sample with durations = the sample without them, plus the longest frame (the decoder relies on this)
    for count, limit, longest in ((50, 8, 13), (9, 8, 4), (64, 3, 63), (200, 7, 100)):
        known = [1.0] * count
        known[longest] = 9.0
        assert set(sample_frames(count, known, limit)) <= set(sample_frames(count, [None] * count, limit)) | {longest}


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_the_longest_displayed_frame_is_scored(fmt: str) -> None:
    durations = [20] * 30
    durations[11] = 4000
    data = animation(fmt, durations)
    if fmt == "WEBP":
        assert webp_durations(data) == [float(d) for d in durations]
    frames = decode_frames(data, size=16, config=DecodeConfig(max_frames=3))
    assert frames.count == 30 and frames.indices == (0, 11, 29)
    assert [colour_of(a) for a in frames.arrays] == [COLOURS[0], COLOURS[1], COLOURS[9]]


def test_multi_page_tiff_pages_are_sampled() -> None:
    frames = decode_frames(animation("TIFF", [0] * 5), size=16, config=DecodeConfig(max_frames=8))
    assert frames.indices == (0, 1, 2, 3, 4) and [colour_of(a) for a in frames.arrays] == COLOURS[:5]


def test_max_frames_1_and_the_total_pixel_budget() -> None:
    data = animation("GIF", [20, 4000, 20])
    first = decode_frames(data, size=16, config=DecodeConfig(max_frames=1))
    assert first.indices == (0,) and first.count == 3
    with pytest.raises(DecodeError, match="too many pixels in the animation: 3 frames of 32x32"):
        decode_frames(data, size=16, config=DecodeConfig(max_pixels=3 * 32 * 32 - 1))


def test_decoder_gives_one_row_per_sampled_frame() -> None:
    still = animation("PNG", [100])  # one frame: a still PNG
    gif = animation("GIF", [20, 4000])
    decoded = ImageDecoder(size=16, config=DecodeConfig(workers=1)).decode([still, b"junk", gif], uint8=True)
    assert decoded.indices == (0, 2, 2) and decoded.frames == (0, 0, 1) and decoded.frame_counts == {2: 2}
    assert set(decoded.errors) == {1} and decoded.pixels.shape == (3, 3, 16, 16)


def verdict(label: str, score: float, frame: int) -> Moderation:
    return Moderation(label=label, score=score, topk=((label, score),), method="clip", frame=frame, frame_count=3)


def test_policy_takes_the_strictest_frame() -> None:
    policy = Policy(PolicyConfig(rules={"bag": LabelRule(block=0.5), "coat": LabelRule(review=0.5)}))
    frames = (verdict("trouser", 0.99, 0), verdict("coat", 0.9, 1), verdict("bag", 0.8, 2))
    chosen, decision = policy.decide_frames(replace(frames[0], frames=frames))
    assert (chosen.frame, chosen.label, decision.action) == (2, "bag", "block")
    allowed = (verdict("trouser", 0.99, 0), verdict("trouser", 0.7, 1))
    chosen, decision = policy.decide_frames(replace(allowed[0], frames=allowed))
    assert (chosen.frame, decision.action) == (0, "allow")  # nothing fires: the first frame speaks
    still = verdict("bag", 0.9, 0)
    assert policy.decide_frames(still) == (still, policy.decide(still.topk, suspected_adversarial=False))
