"""The PDQ index is exact: the same nearest row and distance as a brute-force scan, on both of its paths."""

from __future__ import annotations

import numpy as np
import pytest

from cola_moderation.operators.matching import index as index_module
from cola_moderation.operators.matching.index import PdqIndex, popcount_distance
from cola_moderation.operators.matching.signals import hex_to_words, words_to_hex


def flip(words: np.ndarray, bits: np.ndarray) -> np.ndarray:
    out = words.copy()
    for bit in bits:
        out[bit // 64] ^= np.uint64(1) << np.uint64(63 - bit % 64)
    return out


def queries_near(words: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Half near banked rows (0-45 flipped bits, across the default threshold), half uniform."""
    rows = []
    for i in range(count):
        base = words[rng.integers(len(words))] if i % 2 == 0 else rng.integers(
            0, 2**64 - 1, size=4, dtype=np.uint64, endpoint=True)
        rows.append(flip(base, rng.choice(256, size=int(rng.integers(0, 46)), replace=False)))
    return np.stack(rows)


@pytest.mark.parametrize("size", [50, index_module.BRUTE_FORCE_MAX + 1000])
@pytest.mark.parametrize("threshold", [0, 15, 31, 47])
def test_nearest_equals_brute_force(size: int, threshold: int) -> None:
    rng = np.random.default_rng(size + threshold)
    words = rng.integers(0, 2**64 - 1, size=(size, 4), dtype=np.uint64, endpoint=True)
    words[size - 1] = words[7]  # a duplicate: the tie goes to the lower row
    queries = queries_near(words, rng, 120)
    queries[0] = words[7]
    found = PdqIndex(words).nearest(queries, threshold)
    distances = popcount_distance(queries[:, None, :], words[None, :, :])
    best = distances.argmin(axis=1)
    best_distance = distances[np.arange(len(queries)), best]
    np.testing.assert_array_equal(found.rows, np.where(best_distance <= threshold, best, -1))
    np.testing.assert_array_equal(found.distances, np.where(best_distance <= threshold, best_distance, -1))
    assert found.rows[0] == 7 and found.distances[0] == 0
    assert (found.rows >= 0).sum() > (10 if threshold >= 15 else 0)  # the check is not vacuous


def test_uses_the_chunk_index_above_the_brute_force_size() -> None:
    words = np.random.default_rng(0).integers(0, 2**63, size=(index_module.BRUTE_FORCE_MAX + 1, 4), dtype=np.uint64)
    assert PdqIndex(words)._order is not None
    assert PdqIndex(words[:10])._order is None


def test_empty_index_and_empty_queries() -> None:
    empty = PdqIndex(np.zeros((0, 4), dtype=np.uint64))
    found = empty.nearest(np.zeros((3, 4), dtype=np.uint64), 31)
    assert found.rows.tolist() == [-1, -1, -1]
    assert PdqIndex(np.ones((5, 4), dtype=np.uint64)).nearest(np.zeros((0, 4), dtype=np.uint64), 31).rows.size == 0


def test_hex_words_round_trip_and_bit_order() -> None:
    text = "80" + "0" * 62  # the first bit of the hash vector is the first hex digit's most significant bit
    words = hex_to_words([text])
    assert words.shape == (1, 4) and words[0, 0] == np.uint64(1) << np.uint64(63)
    assert words_to_hex(words[0]) == text
