"""Which frames of an animated or multi-page image are scored.

A moderation verdict on the first frame alone is an evasion anyone can use (a benign first frame shown for 20 ms, the
real content for seconds), so animated GIF / WebP / APNG / AVIF and multi-page TIFF are sampled: the first frame, the
longest-displayed one, the last, then evenly spaced frames, up to ``decode.max_frames``. Every sampled frame is
scored in the same model batch as the other inputs, and the policy takes the strictest frame
(:meth:`~cola_moderation.operators.policy.Policy.decide_frames`).

This is the entry point for video later: a video decoder only has to give the frame count and the display
durations, and decode the frames :func:`sample_frames` picks.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

ANIMATED_FORMATS = frozenset({"GIF", "WEBP", "PNG", "TIFF", "AVIF"})
"""Pillow formats whose files may hold several frames (pages for TIFF)."""


def sample_frames(count: int, durations: Sequence[float | None], max_frames: int) -> tuple[int, ...]:
    """Sorted frame indices to score out of ``count``: the first, the longest-displayed (the first of equals; skipped
    when no duration is known), the last, then evenly spaced ones, at most ``max_frames`` (all when fewer)."""
    if count <= max_frames:
        return tuple(range(count))
    chosen: list[int] = []

    def add(index: int) -> None:
        if len(chosen) < max_frames and index not in chosen:
            chosen.append(index)

    add(0)
    known = [(d, i) for i, d in enumerate(durations[:count]) if d is not None]
    if known:
        longest = max(known, key=lambda pair: (pair[0], -pair[1]))
        add(longest[1])
    add(count - 1)
    slots = max_frames
    while len(chosen) < max_frames:  # evenly spaced, finer until the budget is used
        for k in range(slots):
            add(round(k * (count - 1) / max(1, slots - 1)))
        slots += 1
    return tuple(sorted(chosen))


def webp_durations(data: bytes) -> list[float] | None:
    """Display durations (ms) of an animated WebP's frames from its ``ANMF`` chunk headers (no pixel is decoded:
    Pillow reports a WebP frame's duration only after decoding it), or None when ``data`` is not such a file."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    durations: list[float] = []
    position = 12
    while position + 8 <= len(data):
        name = data[position : position + 4]
        (size,) = struct.unpack_from("<I", data, position + 4)
        if name == b"ANMF" and position + 24 <= len(data):
            durations.append(float(int.from_bytes(data[position + 20 : position + 23], "little")))
        position += 8 + size + (size & 1)
    return durations or None
