"""Nearest banked PDQ hash within a Hamming threshold: exact multi-index hashing over 16 chunks of 16 bits.

Pigeonhole: if two 256-bit hashes differ in at most ``t`` bits, then of their 16 chunks of 16 bits at least one
differs in at most ``t // 16`` bits (else the total would exceed ``t``). So the candidates of a query are the banked
hashes sharing, in some chunk, a value within ``t // 16`` bits of the query's chunk (for the default ``t = 31``: the
chunk itself or one of its 16 one-bit neighbours, 17 x 16 = 272 bucket lookups), and every candidate is verified with
a full popcount. Nothing within ``t`` is missed (tests compare with brute force). Each chunk keeps the bank sorted by
that chunk's value (``int32`` row order) plus a 65,537-entry offset table, so memory is about 100 bytes per hash
(100 MB at 10^6) and a lookup is two offset reads.

Small banks (up to :data:`BRUTE_FORCE_MAX` hashes) are scanned directly instead: at that size a vectorised popcount
over the whole bank is as fast as the lookups.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np

CHUNKS = 16
CHUNK_VALUES = 1 << 16
BRUTE_FORCE_MAX = 4096


@cache
def _masks_within(radius: int) -> np.ndarray:
    """Every 16-bit XOR mask with at most ``radius`` bits set (``[m]`` int64)."""
    masks = [sum(1 << bit for bit in bits) for r in range(radius + 1) for bits in itertools.combinations(range(16), r)]
    return np.array(masks, dtype=np.int64)


@dataclass(frozen=True)
class Nearest:
    """Per query: ``rows`` ``[B]`` the nearest banked row (-1: none within the threshold), ``distances`` ``[B]``
    (-1 where none). Ties go to the lowest row."""

    rows: np.ndarray
    distances: np.ndarray


def popcount_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of ``[..., 4]`` uint64 words (broadcast), as int32 ``[...]``."""
    return np.bitwise_count(a ^ b).astype(np.int32).sum(axis=-1)


class PdqIndex:
    """Exact threshold search over ``words`` ``[n, 4]`` uint64 (see :func:`~.signals.hex_to_words`)."""

    def __init__(self, words: np.ndarray) -> None:
        words = np.ascontiguousarray(words, dtype=np.uint64).reshape(-1, 4)
        self.size = len(words)
        self.words = words
        self._columns = [np.ascontiguousarray(words[:, j]) for j in range(4)]
        self._order: np.ndarray | None = None
        self._offsets: np.ndarray | None = None
        if self.size > BRUTE_FORCE_MAX:
            chunks = words.view(np.uint16).reshape(self.size, CHUNKS)
            order = np.empty((CHUNKS, self.size), dtype=np.int32)
            offsets = np.zeros((CHUNKS, CHUNK_VALUES + 1), dtype=np.int64)
            for c in range(CHUNKS):
                order[c] = np.argsort(chunks[:, c], kind="stable")
                np.cumsum(np.bincount(chunks[:, c], minlength=CHUNK_VALUES), out=offsets[c, 1:])
            self._order = order.ravel()
            self._offsets = offsets

    def nearest(self, queries: np.ndarray, threshold: int) -> Nearest:
        """The nearest banked hash within ``threshold`` bits of each of ``queries`` ``[B, 4]`` uint64."""
        queries = np.ascontiguousarray(queries, dtype=np.uint64).reshape(-1, 4)
        count = len(queries)
        rows = np.full(count, -1, dtype=np.int64)
        distances = np.full(count, -1, dtype=np.int32)
        if count == 0 or self.size == 0:
            return Nearest(rows, distances)
        if self._order is None:
            return self._nearest_scan(queries, threshold, rows, distances)
        candidates, owners, per_query = self._candidates(queries, threshold)
        # Two words first: a random 128-bit half is almost never within the threshold, so most candidates are
        # dropped after two gathers instead of four.
        found = np.zeros(len(candidates), dtype=np.int32)
        for j in (0, 1):
            found += np.bitwise_count(self._columns[j][candidates] ^ np.repeat(queries[:, j], per_query)).astype(
                np.int32)
        keep = found <= threshold
        candidates, owners, found = candidates[keep], owners[keep], found[keep]
        for j in (2, 3):
            found += np.bitwise_count(self._columns[j][candidates] ^ queries[owners, j]).astype(np.int32)
        keep = found <= threshold
        candidates, owners, found = candidates[keep], owners[keep], found[keep]
        if len(candidates):
            order = np.lexsort((candidates, found, owners))
            owners, candidates, found = owners[order], candidates[order], found[order]
            first = np.ones(len(owners), dtype=bool)
            first[1:] = owners[1:] != owners[:-1]
            rows[owners[first]] = candidates[first]
            distances[owners[first]] = found[first]
        return Nearest(rows, distances)

    def _nearest_scan(self, queries: np.ndarray, threshold: int, rows: np.ndarray,
                      distances: np.ndarray) -> Nearest:
        for start in range(0, len(queries), 64):
            block = popcount_distance(queries[start : start + 64, None, :], self.words[None, :, :])  # [b, n]
            best = block.argmin(axis=1)  # first minimum = lowest row
            best_distance = block[np.arange(len(best)), best]
            hit = best_distance <= threshold
            rows[start : start + len(best)] = np.where(hit, best, -1)
            distances[start : start + len(best)] = np.where(hit, best_distance, -1)
        return Nearest(rows, distances)

    def _candidates(self, queries: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows sharing a chunk within ``threshold // 16`` bits with each query (duplicates possible), the query each
        belongs to (queries in order), and the number of candidates per query."""
        assert self._offsets is not None and self._order is not None
        masks = _masks_within(threshold // CHUNKS)
        count = len(queries)
        chunks = queries.view(np.uint16).reshape(count, CHUNKS).astype(np.int64)
        keys = chunks[:, :, None] ^ masks  # [B, 16, m]
        chunk_rows = np.arange(CHUNKS)[None, :, None]
        starts = self._offsets[chunk_rows, keys]
        lengths = (self._offsets[chunk_rows, keys + 1] - starts).ravel()
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(count, dtype=np.int64)
        flat_starts = (starts + chunk_rows * self.size).ravel()
        ends = np.cumsum(lengths)
        positions = np.repeat(flat_starts - (ends - lengths), lengths) + np.arange(total)
        per_query = lengths.reshape(count, -1).sum(axis=1)
        return self._order[positions], np.repeat(np.arange(count), per_query), per_query
