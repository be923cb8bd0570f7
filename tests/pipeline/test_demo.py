"""The README's main command: the batch demo on the bundled sample with the reference model."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd


def test_batch_demo_labels_the_sample_and_dead_letters_the_corrupt_records(tmp_path: Path) -> None:
    from cola_moderation.pipeline.demo import run_batch_demo

    report = run_batch_demo(output=tmp_path / "demo")
    match = re.search(r"clean images:\s+(\d+)/(\d+) labelled correctly", report)
    assert match, report
    correct, total = map(int, match.groups())
    assert total == 300 and correct / total >= 0.8, report
    assert "attacked copies:" in report
    dead = pd.read_parquet(tmp_path / "demo" / "dead_letter")
    assert len(dead) == 4 and set(dead["error_stage"]) == {"decode"}
    routed = sum(len(pd.read_parquet(tmp_path / "demo" / name)) for name in ("output", "quarantine")
                 if any((tmp_path / "demo" / name).glob("*.parquet")))
    assert routed + len(dead) == len(pd.read_parquet(Path(__file__).resolve().parents[2] / "samples/sample.parquet"))
