"""The README's main command, as a user runs it: ``cola demo`` (batch job, bundled sample, reference model) from
another directory, with a quiet stderr."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from cola_moderation.resources import sample_parquet

REPO = Path(__file__).resolve().parents[3]
NOISE = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|\[[^\]]* [EWF] \d+ \d+\]|\x1b\[")
"""Python logging at WARNING or above, Ray's C++ log lines at E/W/F level, tracebacks, ANSI colour codes."""


def test_demo_labels_the_sample_dead_letters_the_corrupt_records_and_keeps_stderr_quiet(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):  # what the CLI itself must take care of
        env.pop(key, None)
    result = subprocess.run([sys.executable, "-m", "cola_moderation.pipeline.cli", "demo", "--output", str(output)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = result.stdout
    match = re.search(r"clean images:\s+(\d+)/(\d+) labelled correctly", report)
    assert match, report
    correct, total = map(int, match.groups())
    assert total == 300 and correct / total >= 0.8, report
    assert "attacked copies:" in report
    frame = pd.read_parquet(output, partitioning="hive")  # one dataset, the route as a column
    dead = frame[frame["route"] == "dead_letter"]
    assert len(dead) == 4 and set(dead["error_stage"]) == {"decode"}
    assert len(frame) == len(pd.read_parquet(sample_parquet()))
    noisy = [line for line in result.stderr.splitlines() if NOISE.search(line)]
    assert noisy == [], result.stderr
    # The review console's queue over the demo's output: every quarantined record, its image read back.
    from cola_moderation.pipeline.jobs.review.items import ParquetItems
    from cola_moderation.pipeline.runtime.config import load_config

    config = load_config("reference", calibrate=False)
    items = ParquetItems(output, parquet=config.parquet, decode=config.decode)
    quarantined = frame[frame["route"] == "quarantine"]
    assert len(quarantined) > 0 and [i.record.id for i in items.items()] == list(quarantined["id"])
    assert all(items.image_png(item).startswith(b"\x89PNG") for item in items.items())
