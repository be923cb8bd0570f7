"""The matcher: MD5 first, then the nearest PDQ within the threshold over all banks, quality floor, bank order."""

from __future__ import annotations

from pathlib import Path

from cola_moderation.operators.matching.config import MatchingConfig
from cola_moderation.operators.matching.matcher import Matcher
from cola_moderation.operators.matching.signals import ImageHashes

A = "f" * 64
NEAR_A = "0" * 5 + "f" * 59  # 20 bits from A
MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def matcher(tmp_path: Path, **options: object) -> Matcher:
    (tmp_path / "first.csv").write_text(f"signal_type,hash,label\npdq,{A},row-a\nmd5,{MD5},row-md5\n")
    (tmp_path / "second.csv").write_text(f"signal_type,hash\npdq,{A}\npdq,{NEAR_A}\n")
    config = MatchingConfig.model_validate({"banks": {
        "first": {"path": str(tmp_path / "first.csv"), "action": "block"},
        "second": {"path": str(tmp_path / "second.csv"), "action": "t_shirt"}}, **options})
    return Matcher.load(config)


def test_matches(tmp_path: Path) -> None:
    m = matcher(tmp_path)
    exact, near, md5, low_quality, far, none = m.match([
        ImageHashes(md5="0" * 32, pdq=A, pdq_quality=100),
        ImageHashes(md5="0" * 32, pdq="0" * 6 + "f" * 58, pdq_quality=90),  # 4 bits from NEAR_A, 24 from A
        ImageHashes(md5=MD5, pdq="0" * 64, pdq_quality=10),
        ImageHashes(md5="0" * 32, pdq=A, pdq_quality=49),
        ImageHashes(md5="0" * 32, pdq="0" * 64, pdq_quality=100),
        None,
    ])
    assert exact is not None and (exact.bank, exact.distance, exact.label, exact.action) == ("first", 0, "row-a",
                                                                                             "block")
    assert near is not None and (near.bank, near.distance, near.hash, near.action) == ("second", 4, NEAR_A, "t_shirt")
    assert md5 is not None and (md5.signal_type, md5.distance, md5.label) == ("md5", 0, "row-md5")
    assert low_quality is None and far is None and none is None
    assert m.size == 4


def test_threshold_is_configurable(tmp_path: Path) -> None:
    hashes = ImageHashes(md5="0" * 32, pdq="0" * 6 + "f" * 58, pdq_quality=90)
    assert matcher(tmp_path, pdq_threshold=3).match([hashes]) == [None]
    assert matcher(tmp_path, pdq_quality_min=95).match([hashes]) == [None]
