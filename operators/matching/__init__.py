"""Known-content matching before the model: PDQ and MD5 hash banks, their index, and the matching stage.

:mod:`.signals` computes an input's hashes (MD5 of the raw bytes, PDQ of the decoded image), :mod:`.banks` loads the
configured bank files (CSV or Parquet, local paths or ``pyarrow.fs`` URIs, also ThreatExchange / Hasher-Matcher-
Actioner CSV exports), :mod:`.index` finds the nearest banked PDQ hash (multi-index hashing, exact), and
:class:`~.matcher.Matcher` turns an input's hashes into a :class:`~.matcher.Match`.
"""

from cola_moderation.operators.matching.config import BankConfig, MatchingConfig
from cola_moderation.operators.matching.matcher import Match, Matcher
from cola_moderation.operators.matching.signals import ImageHashes

__all__ = ["BankConfig", "ImageHashes", "Match", "Matcher", "MatchingConfig"]
