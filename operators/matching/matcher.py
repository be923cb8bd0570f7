"""The matching stage's logic: an input's :class:`~.signals.ImageHashes` -> the best :class:`Match` in the banks.

MD5 (exact bytes) is looked up first; otherwise the nearest banked PDQ hash within ``matching.pdq_threshold`` bits,
over all banks at once, for inputs whose PDQ quality reaches ``matching.pdq_quality_min``. Ties (the same MD5 in two
banks, two PDQ hashes at the same distance) go to the bank listed first in the config, so list the strictest first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cola_moderation.operators.matching.banks import Bank, load_bank, resolve_path
from cola_moderation.operators.matching.config import MatchingConfig
from cola_moderation.operators.matching.index import PdqIndex
from cola_moderation.operators.matching.signals import Hasher, ImageHashes, hex_to_words

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Match:
    """A hit: which ``bank``, by which ``signal_type`` (``pdq`` | ``md5``), at what Hamming ``distance`` (0 for
    MD5), the banked ``hash`` and its row ``label``; ``action`` is the bank's (``allow`` / ``review`` / ``block`` or
    a label to attach)."""

    bank: str
    signal_type: str
    distance: int
    hash: str
    label: str | None
    action: str

    def to_json(self) -> dict[str, Any]:
        return {"bank": self.bank, "signal_type": self.signal_type, "distance": self.distance, "hash": self.hash,
                "label": self.label}


class Matcher:
    """All configured banks behind one PDQ index and one MD5 map. Build it once per worker (:meth:`load`)."""

    def __init__(self, config: MatchingConfig, banks: Sequence[Bank]) -> None:
        self.config = config
        self.banks = list(banks)
        self.hasher = Hasher(pdq=any(bank.pdq_hex for bank in self.banks))
        self._pdq_bank = np.concatenate([np.full(len(b.pdq_hex), i, dtype=np.int32) for i, b in enumerate(banks)]
                                        or [np.zeros(0, dtype=np.int32)])
        self._pdq_row = np.concatenate([np.arange(len(b.pdq_hex), dtype=np.int64) for b in banks]
                                       or [np.zeros(0, dtype=np.int64)])
        words = [b.pdq_words for b in banks if len(b.pdq_words)]
        self.index = PdqIndex(np.concatenate(words) if words else np.zeros((0, 4), dtype=np.uint64))
        self._md5: dict[str, int] = {}
        for i, bank in enumerate(self.banks):
            for value in bank.md5:
                self._md5.setdefault(value, i)

    @classmethod
    def load(cls, config: MatchingConfig, *, base_dir: Path | None = None) -> Matcher:
        """Load every bank of ``config`` (relative paths from ``base_dir``)."""
        banks = [load_bank(name, bank, uri=resolve_path(bank.path, base_dir)) for name, bank in config.banks.items()]
        for bank in banks:
            log.info("bank %r: %d PDQ + %d MD5 hashes from %s%s", bank.name, len(bank.pdq_hex), len(bank.md5),
                     bank.uri, f" ({bank.skipped} NEGATIVE_CLASS rows skipped)" if bank.skipped else "")
        return cls(config, banks)

    @property
    def size(self) -> int:
        return sum(len(bank) for bank in self.banks)

    def match(self, hashes: Sequence[ImageHashes | None]) -> list[Match | None]:
        """The best match of each input (``None``: no hashes, or no match), in order."""
        results: list[Match | None] = [None] * len(hashes)
        queries: list[int] = []
        for position, item in enumerate(hashes):
            if item is None:
                continue
            bank_index = self._md5.get(item.md5)
            if bank_index is not None:
                bank = self.banks[bank_index]
                results[position] = Match(bank=bank.name, signal_type="md5", distance=0, hash=item.md5,
                                          label=bank.md5[item.md5], action=bank.config.action)
            elif (item.pdq is not None and item.pdq_quality is not None
                  and item.pdq_quality >= self.config.pdq_quality_min):
                queries.append(position)
        if queries and self.index.size:
            words = hex_to_words([hashes[p].pdq for p in queries])  # type: ignore[union-attr,misc]
            nearest = self.index.nearest(words, self.config.pdq_threshold)
            for position, row, distance in zip(queries, nearest.rows.tolist(), nearest.distances.tolist(),
                                               strict=True):
                if row < 0:
                    continue
                bank = self.banks[int(self._pdq_bank[row])]
                local = int(self._pdq_row[row])
                results[position] = Match(bank=bank.name, signal_type="pdq", distance=int(distance),
                                          hash=bank.pdq_hex[local], label=bank.pdq_labels[local],
                                          action=bank.config.action)
        return results
