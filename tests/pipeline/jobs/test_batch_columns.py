"""The batch job's model stage on Arrow tables (read -> decode -> model stage, in this process, no Ray cluster)
gives the same records as the records path (``ParquetSource`` -> ``ModerationWorker.process`` -> ``to_columns``) on
one input file with still, animated, corrupt, empty, null and bank-matched images and typed passthrough columns;
``id`` and ``source`` come from the input table, not from placeholders."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cola_moderation.connectors.parquet.source import ParquetSource, expand_inputs, resolve_passthrough
from cola_moderation.connectors.records import (
    DeadLetter,
    FilePosition,
    InputRecord,
    Route,
    file_source_array,
    source_array,
)
from cola_moderation.pipeline.jobs.batch import ModelStage
from cola_moderation.pipeline.jobs.batch_stages import decode_rows, read_file
from cola_moderation.pipeline.runtime.config import PipelineConfig, parse_config
from cola_moderation.pipeline.runtime.metrics import WorkerMetrics
from cola_moderation.pipeline.runtime.records import ARROW_SCHEMA, FIELD_NAMES, to_columns
from cola_moderation.pipeline.runtime.worker import ModerationWorker
from cola_moderation.resources import config_path
from tests.operators.matching.known_images import reference_config, write_bank_with_cola_hash
from tests.operators.test_frames import animation

TIMING = {"processed_at", "latency_ms"}
"""Fields that depend on when each path ran."""


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(input file, bank): rows 0-3 are in the bank; 9 is truncated, 10 empty, 11 null; 12 and 13 animated."""
    folder = tmp_path_factory.mktemp("columns")
    images: list[bytes | None] = [png(i) for i in range(9)]
    images += [png(9)[:40], b"", None, animation("GIF", [20, 4000]), animation("WEBP", [100, 100, 100])]
    bank = write_bank_with_cola_hash([png(i) for i in range(4)], folder / "bank")
    table = pa.table({"id": [f"row-{i:02d}" for i in range(len(images))], "image": pa.array(images, pa.binary()),
                      "shard": pa.array([i % 3 for i in range(len(images))], pa.int16()),
                      "tags": pa.array([[f"t{i}"] for i in range(len(images))], pa.list_(pa.string()))})
    pq.write_table(table, folder / "in.parquet", row_group_size=6)  # several source batches
    return folder / "in.parquet", bank


def config(bank: Path, **options: Any) -> PipelineConfig:
    data = reference_config(bank, **options)
    data["method"] = "cascade"  # the detector and COLA run too
    data["parquet"] = {"batch_rows": 6}
    data["decode"] = {"max_frames": 3}
    return parse_config(data, base_dir=config_path("reference").parent)


def records_path(config: PipelineConfig, worker: ModerationWorker, file: Path) -> dict[str, dict[str, Any]]:
    """id -> the row the records path writes (the record's columns, or the dead letter's error fields)."""
    rows: dict[str, dict[str, Any]] = {}
    with ParquetSource(file, config.parquet) as source:
        while (batch := source.poll()) is not None:
            outcomes = [*worker.process(batch.records).outcomes, *batch.dead_letters]
            routed = [o for o in outcomes if not isinstance(o, DeadLetter)]
            table = pa.table(to_columns([o.record for o in routed]), schema=ARROW_SCHEMA)
            for outcome, row in zip(routed, table.to_pylist(), strict=True):
                rows[row["id"]] = {"route": outcome.route.value, **row}
            for dead in (o for o in outcomes if isinstance(o, DeadLetter)):
                rows[dead.record.id] = {"route": Route.DEAD_LETTER.value, "id": dead.record.id,
                                        "source": dead.record.source.as_dict(), **dead.error_fields()}
    return rows


def columns_path(config: PipelineConfig, file: Path) -> tuple[dict[str, dict[str, Any]], pa.Table]:
    """id -> the row the batch job's model stage writes, and the stage's tables concatenated."""
    files = expand_inputs(str(file))
    passthrough, _ = resolve_passthrough(files, config.parquet)
    stage = ModelStage(config)
    tables = []
    try:
        for table in read_file(pa.table({"index": [0]}), files=files, passthrough=passthrough, config=config.parquet,
                               done=frozenset(), max_image_bytes=config.decode.max_bytes):
            decoded = decode_rows(table, size=stage.worker.start().decoder.size, config=config.decode,
                                  hashing=config.matching.enabled)
            tables.append(stage(decoded))
    finally:
        stage.worker.close()
    out = pa.concat_tables(tables)
    rows = {}
    for row in out.to_pylist():
        if row["route"] == Route.DEAD_LETTER.value:
            row = {"route": row["route"], "id": row["id"], "source": row["source"], "error.class": row["error_class"],
                   "error.message": row["error_message"], "error.stage": row["error_stage"]}
        rows[row["id"]] = row
    return rows, out


def comparable(row: dict[str, Any]) -> dict[str, Any]:
    source = {k: v for k, v in row["source"].items() if v is not None}
    return {k: v for k, v in row.items() if k not in TIMING and not k.startswith("passthrough:") and k not in (
        "key", "batch_total", "payload", "error_class", "error_message", "error_stage")} | {"source": source}


@pytest.mark.slow
@pytest.mark.parametrize("skip_model_on_match", [False, True])
def test_model_stage_columns_equal_the_records_path(inputs: tuple[Path, Path], skip_model_on_match: bool) -> None:
    file, bank = inputs
    cfg = config(bank, skip_model_on_match=skip_model_on_match)
    worker = ModerationWorker(cfg)
    try:
        expected = records_path(cfg, worker, file)
    finally:
        worker.close()
    got, table = columns_path(cfg, file)

    assert set(got) == set(expected) == {f"row-{i:02d}" for i in range(14)}
    for record_id in sorted(expected):
        assert comparable(got[record_id]) == comparable(expected[record_id]), record_id
    routes = {i: got[i]["route"] for i in got}
    assert [i for i, r in sorted(routes.items()) if r == Route.DEAD_LETTER.value] == ["row-09", "row-10", "row-11"]
    matched = sorted(i for i in got if got[i].get("match"))
    assert matched == ["row-00", "row-01", "row-02", "row-03"]
    assert all(got[i]["decided_by"] == "match" for i in matched)
    assert {got[i]["frame_count"] for i in ("row-12", "row-13")} == {2, 3}
    assert all(got[i]["processed_at"] is not None and got[i]["latency_ms"] >= 0 for i in got
               if got[i]["route"] != Route.DEAD_LETTER.value)
    # every record column of the schema is there, typed as the schema says; ids and sources are the input's
    for field in ARROW_SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name
    rows = table.column("source").to_pylist()
    assert all(r["file"] == str(file.resolve()) and r["row"] == int(i[4:]) for r, i in zip(
        rows, table.column("id").to_pylist(), strict=True))
    assert table.column("passthrough:shard").type == pa.int16()


def test_file_source_array_equals_the_positions_form() -> None:
    files, rows = pa.array(["a.parquet", "b.parquet", "a.parquet"]), pa.chunked_array([[0], [7, 2]], pa.int64())
    expected = source_array([FilePosition("a.parquet", 0), FilePosition("b.parquet", 7), FilePosition("a.parquet", 2)])
    assert file_source_array(files, rows).equals(expected)


def test_field_names_are_the_schema_minus_what_the_input_gives() -> None:
    assert set(FIELD_NAMES) | {"id", "source"} == set(ARROW_SCHEMA.names)
    assert "id" not in FIELD_NAMES and "source" not in FIELD_NAMES


class RecordedMetrics(WorkerMetrics):
    """The worker metrics' bookkeeping without Ray's metric objects: what each path hands to ``_observe``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def _observe(self, count: int, model_seconds: float, routed: list[tuple[Route, float, bool]],
                 dead_stages: list[str]) -> None:
        self.calls.append((count, [(route, flagged) for route, _, flagged in routed], dead_stages))


@pytest.mark.slow
def test_both_paths_report_the_same_metrics(inputs: tuple[Path, Path]) -> None:
    file, bank = inputs
    cfg = config(bank)
    worker = ModerationWorker(cfg)
    metrics = RecordedMetrics()
    try:
        with ParquetSource(file, cfg.parquet) as source:
            batch = source.poll()
            assert batch is not None
        records = [*batch.records, *(InputRecord(f"junk-{i}", b"junk", {}, FilePosition("x", i)) for i in range(2))]
        decoded = worker.start().decoder.decode([r.payload for r in records])
        metrics.observe(worker.process_decoded(records, decoded))
        metrics.observe_columns(worker.process_columns([r.id for r in records], decoded))
    finally:
        worker.close()
    by_records, by_columns = metrics.calls
    assert by_records == by_columns
    assert by_records[0] == len(records) and by_records[2] == ["decode", "decode"]
