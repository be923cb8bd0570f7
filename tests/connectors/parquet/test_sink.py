"""ParquetSink: one hive-partitioned dataset (route=output|quarantine|dead_letter, one schema) readable by plain
pyarrow/pandas, files sized by a target, atomic rolls, and a SIGKILLed job that reruns to complete output without
duplicate rows."""

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
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.parquet.sink import ParquetSink
from cola_moderation.connectors.parquet.source import ParquetSource
from cola_moderation.pipeline.runtime.records import ARROW_SCHEMA, SCHEMA_VERSION
from tests.connectors.jobs import JPEG, PNG, SERIALIZER, drain

REPO = Path(__file__).resolve().parents[3]
ROUTES = ("output", "quarantine", "dead_letter")


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
    table = ds.dataset(directory, partitioning="hive").to_table(columns=["id", "route"])  # plain pyarrow
    counts: dict[str, collections.Counter] = {route: collections.Counter() for route in ROUTES}
    for record_id, route in zip(table.column("id").to_pylist(), table.column("route").to_pylist(), strict=True):
        counts[route][record_id] += 1
    return counts


def _files(directory: Path, route: str) -> list[Path]:
    return sorted((directory / f"route={route}").glob("part-*.parquet"))


def test_output_is_one_dataset_readable_by_pyarrow_and_pandas(tmp_path: Path) -> None:
    expected = _inputs(tmp_path / "in", files=2, rows=40)
    config = ParquetConfig(batch_rows=16)
    sink = ParquetSink(tmp_path / "out", SERIALIZER, config)
    with ParquetSource(tmp_path / "in", config, skip=sink.is_complete) as source, sink:
        assert drain(source, sink) == 80
    counts = _read_ids(tmp_path / "out")
    for route in counts:
        assert set(counts[route]) == {i for i, r in expected.items() if r == route}
        assert max(counts[route].values()) == 1
    # one file per route (the default target is far above 80 rows), all with the same schema
    files = [f for route in ROUTES for f in _files(tmp_path / "out", route)]
    assert len(files) == 3 and len({pq.read_schema(f).remove_metadata() for f in files}) == 1
    frame = pd.read_parquet(tmp_path / "out", partitioning="hive")
    assert len(frame) == 80 and set(frame["route"]) == set(ROUTES)
    table = ds.dataset(tmp_path / "out", partitioning="hive").to_table()
    for field in ARROW_SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name
    assert table.schema.field("width").type == pa.int64()  # passthrough column, spread from metadata
    assert table.schema.field("metadata_route").type == pa.string()  # clashes with the partition key: renamed
    outputs = table.filter(pc.equal(table.column("route"), "output")).to_pylist()
    row = outputs[0]
    assert row["topk"] == [{"label": row["label"], "score": 1.0}] and row["payload"] is None
    assert row["source"]["file"].endswith(".parquet") and row["source"]["row"] >= 0
    assert row["processed_at"].tzinfo is not None
    assert pq.read_metadata(files[-1]).metadata[b"cola.schema"] == str(SCHEMA_VERSION).encode()
    dead = table.filter(pc.equal(table.column("route"), "dead_letter")).to_pylist()
    first = min(dead, key=lambda d: int(d["id"][1:]))
    assert first["payload"].startswith(b"BM-not") and first["error_class"] == "DecodeError"
    assert first["error_stage"] == "decode" and "not a PNG or JPEG" in first["error_message"]
    assert first["label"] is None and first["width"] == 0  # record columns null, passthrough kept
    assert not list((tmp_path / "out").rglob(".*.tmp"))


def test_files_are_sized_by_the_row_and_byte_targets(tmp_path: Path) -> None:
    _inputs(tmp_path / "in", files=1, rows=200)
    for target, name in ((ParquetConfig(batch_rows=10, file_rows=50), "rows"),
                         (ParquetConfig(batch_rows=10, file_bytes=20_000), "bytes")):
        out = tmp_path / name
        sink = ParquetSink(out, SERIALIZER, target)
        with ParquetSource(tmp_path / "in", target, skip=sink.is_complete) as source, sink:
            assert drain(source, sink) == 200
        sizes = [pq.read_metadata(f).num_rows for f in _files(out, "output")]
        assert sum(sizes) == sum(sum(c.values()) for r, c in _read_ids(out).items() if r == "output")
        assert 2 < len(sizes) < 20, sizes  # neither one file nor one per batch
        if name == "rows":
            assert len(_files(out, "output")) == 4  # 200 rows, rolls of 50


def test_an_interrupted_roll_is_removed_and_redone(tmp_path: Path) -> None:
    _inputs(tmp_path / "in", files=1, rows=40)
    config = ParquetConfig(batch_rows=20)
    sink = ParquetSink(tmp_path / "out", SERIALIZER, config)
    with ParquetSource(tmp_path / "in", config, skip=sink.is_complete) as source, sink:
        drain(source, sink)
    # a killed writer left the dead-letter file of a roll whose output file was never written, and a temp file
    (dead,) = _files(tmp_path / "out", "dead_letter")
    orphan = dead.with_name("part-0000orphan.parquet")
    orphan.write_bytes(dead.read_bytes())
    (tmp_path / "out" / "route=output" / ".part-x.parquet.1.tmp").write_bytes(b"partial")
    ParquetSink(tmp_path / "out", SERIALIZER, config)
    assert not orphan.exists() and not list((tmp_path / "out").rglob(".*.tmp"))
    assert max(max(c.values()) for c in _read_ids(tmp_path / "out").values()) == 1


def test_rerun_skips_completed_batches(tmp_path: Path) -> None:
    _inputs(tmp_path / "in", files=1, rows=64)
    config = ParquetConfig(batch_rows=16)
    sink = ParquetSink(tmp_path / "out", SERIALIZER, config)
    with ParquetSource(tmp_path / "in", config, skip=sink.is_complete) as source:
        assert drain(source, sink, max_inputs=32) == 32  # "crash" after two batches
    sink.close()  # the two batches' roll
    sink = ParquetSink(tmp_path / "out", SERIALIZER, config)
    again = ParquetSource(tmp_path / "in", config, skip=sink.is_complete)
    assert drain(again, sink) == 32 and again.skipped_batches == 2
    sink.close()
    assert sum(sum(c.values()) for c in _read_ids(tmp_path / "out").values()) == 64


def test_sigkilled_job_reruns_to_complete_output_without_duplicates(tmp_path: Path) -> None:
    expected = _inputs(tmp_path / "in", files=3, rows=150)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tests.connectors.jobs", "parquet", "--config",
               ParquetConfig(batch_rows=10, file_rows=30).model_dump_json(), "--input", str(tmp_path / "in"),
               "--output", str(out), "--sleep-per-batch", "0.04"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for kill_after_rolls in (2, 5):  # a roll is 3 batches
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(_files(out, "output")) < kill_after_rolls and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.03)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    partial = len(_files(out, "output"))
    assert 5 <= partial < 15
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["skipped_batches"] == 3 * partial  # completed batches were not redone
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
