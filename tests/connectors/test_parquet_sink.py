"""ParquetSink: documented schema readable by plain pyarrow/pandas, atomic parts, dead letters and quarantine
datasets, and a SIGKILLed batch job that reruns to complete output without duplicate rows."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.parquet_sink import ParquetSink
from cola_moderation.connectors.parquet_source import ParquetSource
from cola_moderation.pipeline.records import ARROW_SCHEMA
from tests.connectors.jobs import JPEG, PNG, SERIALIZER, drain

REPO = Path(__file__).resolve().parents[2]


def _inputs(directory: Path, files: int, rows: int) -> dict[str, str]:
    """Parquet files with an id, image and two passthrough columns; returns id -> expected route."""
    expected = {}
    directory.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        ids, images, routes = [], [], []
        for r in range(rows):
            i = f * rows + r
            ids.append(f"p{i}")
            if i % 13 == 0:
                images.append(b"BM-not-an-accepted-format" + bytes(i % 7))
                expected[ids[-1]] = "dead_letter"
            else:
                images.append((PNG if i % 2 else JPEG) + i.to_bytes(4, "big"))
                expected[ids[-1]] = "quarantine" if i % 17 == 0 else "output"
            routes.append("quarantine" if i % 17 == 0 else None)
        pq.write_table(pa.table({"id": ids, "image": images, "route": pa.array(routes, pa.string()),
                                 "width": list(range(rows))}), directory / f"in-{f}.parquet", row_group_size=50)
    return expected


def _read_ids(directory: Path) -> dict[str, collections.Counter]:
    counts = {}
    for route in ("output", "quarantine", "dead_letter"):
        table = pq.read_table(directory / route)  # plain pyarrow, no project code
        counts[route] = collections.Counter(table.column("id").to_pylist())
    return counts


def test_output_schema_readable_by_pyarrow_and_pandas(tmp_path: Path) -> None:
    expected = _inputs(tmp_path / "in", files=2, rows=40)
    config = ParquetConfig(batch_rows=16)
    sink = ParquetSink(tmp_path / "out", SERIALIZER, config)
    with ParquetSource(tmp_path / "in", config, skip=sink.is_complete) as source, sink:
        assert drain(source, sink) == 80
    counts = _read_ids(tmp_path / "out")
    for route in counts:
        assert set(counts[route]) == {i for i, r in expected.items() if r == route}
        assert max(counts[route].values()) == 1
    frame = pd.read_parquet(tmp_path / "out" / "output")
    assert len(frame) == sum(1 for r in expected.values() if r == "output")
    table = pq.read_table(tmp_path / "out" / "output")
    for field in ARROW_SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name
    assert table.schema.field("width").type == pa.int64()  # passthrough column, spread from metadata
    row = table.slice(0, 1).to_pylist()[0]
    assert row["topk"] == [{"label": row["label"], "score": 1.0}]
    assert row["source"]["file"].endswith(".parquet") and row["source"]["row"] >= 0
    assert row["processed_at"].tzinfo is not None
    assert pq.read_metadata(next((tmp_path / "out" / "output").glob("*.parquet"))).metadata[b"cola.schema"] \
        == b"output/2"
    dead = pq.read_table(tmp_path / "out" / "dead_letter").to_pylist()
    first = min(dead, key=lambda d: int(d["id"][1:]))
    assert first["payload"].startswith(b"BM-not") and first["error_class"] == "DecodeError"
    assert first["error_stage"] == "decode" and "not a PNG or JPEG" in first["error_message"]
    assert not list((tmp_path / "out").rglob(".*.tmp"))


def test_rerun_skips_completed_batches(tmp_path: Path) -> None:
    _inputs(tmp_path / "in", files=1, rows=64)
    config = ParquetConfig(batch_rows=16)
    sink = ParquetSink(tmp_path / "out", SERIALIZER, config)
    with ParquetSource(tmp_path / "in", config, skip=sink.is_complete) as source:
        assert drain(source, sink, max_inputs=32) == 32  # "crash" after two batches
    sink = ParquetSink(tmp_path / "out", SERIALIZER, config)
    again = ParquetSource(tmp_path / "in", config, skip=sink.is_complete)
    assert drain(again, sink) == 32 and again.skipped_batches == 2
    assert sum(sum(c.values()) for c in _read_ids(tmp_path / "out").values()) == 64


def test_sigkilled_job_reruns_to_complete_output_without_duplicates(tmp_path: Path) -> None:
    expected = _inputs(tmp_path / "in", files=3, rows=150)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tests.connectors.jobs", "parquet", "--config",
               ParquetConfig(batch_rows=10).model_dump_json(), "--input", str(tmp_path / "in"), "--output", str(out),
               "--sleep-per-batch", "0.04"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for kill_after_parts in (5, 15):
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(list((out / "output").glob("part-*.parquet"))) < kill_after_parts and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.03)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    partial = len(list((out / "output").glob("part-*.parquet")))
    assert 15 <= partial < 45
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["skipped_batches"] >= partial  # completed batches were not redone
    assert summary["committed_inputs"] + 10 * summary["skipped_batches"] == 450
    counts = _read_ids(out)
    for route, ids in counts.items():
        assert set(ids) == {i for i, r in expected.items() if r == route}, route
        assert max(ids.values()) == 1, f"{route}: duplicate rows"
    assert not list(out.rglob(".*.tmp"))


def test_rerun_with_other_batch_settings_is_refused(tmp_path: Path) -> None:
    from cola_moderation.operators.errors import ConfigError

    ParquetSink(tmp_path / "out", SERIALIZER, ParquetConfig(batch_rows=64))
    ParquetSink(tmp_path / "out", SERIALIZER, ParquetConfig(batch_rows=64))  # same settings: resume is fine
    with pytest.raises(ConfigError, match=r"parquet.batch_rows=32 \(was 64\)"):
        ParquetSink(tmp_path / "out", SERIALIZER, ParquetConfig(batch_rows=32))
