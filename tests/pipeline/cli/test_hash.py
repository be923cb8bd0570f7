"""``cola hash`` and ``cola bank add`` as a user runs them (subprocesses); the banks they build load and match."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cola_moderation.operators.matching.banks import load_bank
from cola_moderation.operators.matching.config import BankConfig
from cola_moderation.operators.matching.signals import md5_hex
from tests.operators.matching.known_images import REPO, jpeg, png


def cola(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cola_moderation.pipeline.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def picture(seed: int) -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64]
    return ((np.sin(x / (3 + seed)) + np.cos(y / (5 + seed))) * 60 + 128).astype(np.uint8)


def test_cola_hash_prints_json_lines_and_bank_rows(tmp_path: Path) -> None:
    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    good.write_bytes(png(picture(0)))
    bad.write_bytes(b"not an image")
    result = cola("hash", str(good), str(bad))
    assert result.returncode == 1
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["md5"] == md5_hex(good.read_bytes()) and len(first["pdq"]) == 64 and first["pdq_quality"] >= 50
    assert second["path"] == str(bad) and "unrecognised image format" in second["error"]
    rows = cola("hash", "--bank-rows", "--label", "meme", str(good))
    assert rows.returncode == 0
    (tmp_path / "bank.csv").write_text(rows.stdout)
    bank = load_bank("b", BankConfig(path=str(tmp_path / "bank.csv")))
    assert bank.pdq_hex == [first["pdq"]] and bank.md5 == {first["md5"]: "meme"}


def test_bank_add_appends_reviewed_items_once(tmp_path: Path) -> None:
    images = [png(picture(i)) for i in range(3)]
    (tmp_path / "pic.jpg").write_bytes(jpeg(picture(3), 90))
    pq.write_table(pa.table({"id": ["r0", "r1", "r2", "r3", "r4"],
                             "image": pa.array([*images, b"broken", None], pa.binary())}), tmp_path / "items.parquet")
    pq.write_table(pa.table({"id": ["p0"], "image": ["pic.jpg"]}), tmp_path / "paths.parquet")
    for bank in (tmp_path / "bank.csv", tmp_path / "bank.parquet"):
        first = cola("bank", "add", str(bank), "--input", str(tmp_path / "items.parquet"), "--label", "spam")
        assert first.returncode == 1 and "r3" in first.stderr and "6 rows added" in first.stderr, first.stderr
        again = cola("bank", "add", str(bank), "--input", str(tmp_path / "items.parquet"), "--label", "spam")
        assert "0 rows added" in again.stderr, again.stderr
        paths = cola("bank", "add", str(bank), "--input", str(tmp_path / "paths.parquet"))
        assert paths.returncode == 0 and "2 rows added" in paths.stderr, paths.stderr
        loaded = load_bank("b", BankConfig(path=str(bank)))
        assert len(loaded.pdq_hex) == 4 and len(loaded.md5) == 4
        assert loaded.md5[md5_hex(images[1])] == "spam" and loaded.pdq_labels[-1] is None


def test_bank_add_from_review_decisions(tmp_path: Path) -> None:
    """A ``cola review`` decisions dataset: the newest decision per id counts, reviewer-confirmed bad items are
    banked with their final label, images read back from the input rows the records name."""
    from datetime import UTC, datetime

    images = [png(picture(i)) for i in range(3)]
    pq.write_table(pa.table({"id": ["a", "b", "c"], "image": images}), tmp_path / "in.parquet")
    source = str(tmp_path / "in.parquet")
    decided = [datetime(2026, 12, 1, 10, m, tzinfo=UTC) for m in range(4)]
    rows = {"id": ["a", "b", "c", "b"], "decided_at": decided, "revision": [1, 1, 1, 2],
            "decision": ["confirm", "relabel", "adversarial", "allow"],
            "final_label": ["t_shirt", "bag", None, None],
            "source": [{"file": source, "row": i} for i in (0, 1, 2, 1)]}
    (tmp_path / "d" / "route=decisions").mkdir(parents=True)
    pq.write_table(pa.table(rows), tmp_path / "d" / "route=decisions" / "part-0.parquet")
    bank = tmp_path / "bank.csv"
    result = cola("bank", "add", str(bank), "--decisions", str(tmp_path / "d"))
    assert result.returncode == 0 and "4 rows added" in result.stderr, result.stderr  # b's newest decision: allow
    loaded = load_bank("b", BankConfig(path=str(bank)))
    assert loaded.md5 == {md5_hex(images[0]): "t_shirt", md5_hex(images[2]): None}
