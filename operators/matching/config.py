"""``matching:`` section: named hash banks, the PDQ distance threshold and quality floor, and whether a match skips
the model."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from cola_moderation.operators.config import Section

ACTIONS = ("allow", "review", "block")


class BankConfig(Section):
    """One bank: a file of hashes and what a match means."""

    path: Annotated[str, Field(min_length=1)]
    """CSV or Parquet (by extension: ``.csv``, ``.csv.gz``, ``.parquet``, ``.pq``); a local path (relative paths
    resolve from the config file's folder) or a ``pyarrow.fs`` URI (``s3://bucket/bank.parquet?region=...``).
    Columns: ``signal_type`` (``pdq`` | ``md5``), ``hash`` (hex), optional ``label``; or a ThreatExchange /
    Hasher-Matcher-Actioner CSV export (``signal_type, signal_str, collab, category, tags``)."""
    action: Annotated[str, Field(min_length=1)] = "review"
    """``block``, ``review`` or ``allow`` (applied through the policy: the strictest action wins), or a label to
    attach: the record gets that label at score 1 and the policy's rules for it apply."""

    @property
    def attaches_label(self) -> bool:
        return self.action not in ACTIONS


class MatchingConfig(Section):
    """Hash matching before the model (off while ``banks`` is empty)."""

    banks: dict[str, BankConfig] = Field(default_factory=dict)
    """Bank name -> bank. The name is written into ``match.bank`` of every record it matches."""
    pdq_threshold: Annotated[int, Field(ge=0, le=128)] = 31
    """Largest Hamming distance (of 256 bits) that counts as a PDQ match; 31 is Hasher-Matcher-Actioner's default."""
    pdq_quality_min: Annotated[int, Field(ge=0, le=100)] = 50
    """Inputs whose PDQ quality is below this are not PDQ-matched (flat or tiny images hash unreliably; MD5 still
    applies). Banked hashes carry no quality and are all used."""
    skip_model_on_match: bool = False
    """A matched input is routed on the bank's action alone, without running the image encoder."""

    @field_validator("banks")
    @classmethod
    def _names(cls, value: dict[str, BankConfig]) -> dict[str, BankConfig]:
        for name in value:
            if not name.strip():
                raise ValueError("bank names must not be empty")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.banks)
