"""End to end: cola batch on a real (private, loopback) Ray cluster with the tiny model."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cola_moderation.pipeline.runtime.config import PipelineConfig, parse_config
from cola_moderation.pipeline.runtime.summary import RunSummary


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (36, 48, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


TYPED = pa.schema([("shard", pa.int32()), ("taken_at", pa.timestamp("ms", tz="Europe/Paris")),
                   ("camera", pa.dictionary(pa.int32(), pa.string())),
                   ("exif", pa.struct([("iso", pa.int32()), ("tags", pa.list_(pa.string()))]))])
"""Passthrough types the output must keep in every route."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("batch-in")
    (directory / "loose.png").write_bytes(png(999))
    rows = []
    for i in range(60):
        image: bytes | None = png(i)
        if i % 15 == 3:
            image = png(i)[:50]  # truncated
        elif i % 15 == 7:
            image = b""
        elif i == 59:
            image = None  # null image: a source-stage dead letter
        rows.append({"id": f"img-{i:03d}", "image": image, "uploader": f"user{i % 4}", "score_hint": float(i),
                     "shard": i % 3, "taken_at": datetime(2026, 5, 1, tzinfo=UTC) + timedelta(minutes=i),
                     "camera": f"cam{i % 2}", "exif": {"iso": 100 * i, "tags": [f"t{i}"]}})
    schema = pa.schema([("id", pa.string()), ("image", pa.binary()), ("uploader", pa.string()),
                        ("score_hint", pa.float64()), *TYPED])
    pq.write_table(pa.Table.from_pylist(rows[:40], schema=schema), directory / "a.parquet", row_group_size=25)
    pq.write_table(pa.Table.from_pylist(rows[40:], schema=schema), directory / "b.parquet")
    # a file whose image column holds paths, and no id column (ids become file:row)
    pq.write_table(pa.table({"image": ["loose.png", "missing.png"], "note": ["ok", "gone"]}), directory / "c.parquet")
    return directory


@pytest.fixture(scope="module")
def config(tiny_model_dir: Path) -> PipelineConfig:
    return parse_config({
        "model": {"path": str(tiny_model_dir), "device": "cpu", "batch_size": 8},
        "taxonomy": {"labels": ["cat", "dog", "car"], "templates": ["a photo of a {}."]},
        "method": "clip",
        "detector": {"enabled": False},
        "policy": {"rules": {"car": {"review": 0.0}}},
        "parquet": {"batch_rows": 10, "file_rows": 20},
        "ray": {"worker_num_cpus": 1, "num_cpus": 2},
    })


@pytest.fixture(scope="module")
def first_run(config: PipelineConfig, dataset: Path, tmp_path_factory: pytest.TempPathFactory,
              ) -> tuple[Path, RunSummary]:
    from cola_moderation.pipeline.jobs.batch import run_batch_job

    output = tmp_path_factory.mktemp("batch-out") / "out"
    return output, run_batch_job(config, inputs=str(dataset / "*.parquet"), output=output, progress=False)


def read_all(output: Path) -> pd.DataFrame:
    return ds.dataset(output, partitioning="hive").to_table().to_pandas()


def expected_ids(dataset: Path) -> set[str]:
    return {f"img-{i:03d}" for i in range(60)} | {f"{(dataset / 'c.parquet').resolve()}:{row}" for row in (0, 1)}


def test_batch_job_routes_every_input_once(first_run: tuple[Path, RunSummary], dataset: Path) -> None:
    output, summary = first_run
    frame = read_all(output)
    assert sorted(frame["id"]) == sorted(expected_ids(dataset))  # exactly once each
    dead = frame[frame["route"] == "dead_letter"]
    assert summary.inputs == 62 and summary.routes["dead_letter"] == len(dead)
    assert summary.routes["output"] == (frame["route"] == "output").sum()
    assert summary.first_output_s is not None and 0 < summary.first_output_s <= summary.seconds
    assert summary.first_rows_s is not None and 0 < summary.first_rows_s <= summary.first_output_s

    # corrupt rows are dead letters with the original bytes and a specific error
    by_id = dead.set_index("id")
    assert "truncated" in by_id.loc["img-003", "error_message"]
    assert by_id.loc["img-003", "payload"] == png(3)[:50]
    assert "empty" in by_id.loc["img-007", "error_message"]
    assert by_id.loc["img-059", "error_stage"] == "source"
    assert by_id.loc[f"{(dataset / 'c.parquet').resolve()}:1", "error_stage"] == "source"

    # outputs carry the record schema and the passthrough columns; their image bytes are not kept
    routed = frame[frame["route"] != "dead_letter"]
    row = routed.set_index("id").loc["img-001"]
    assert row["uploader"] == "user1" and row["score_hint"] == 1.0 and row["payload"] is None
    assert row["source"] == {"topic": None, "partition": None, "offset": None,
                             "file": str((dataset / "a.parquet").resolve()), "row": 1, "request": None}
    assert row["label"] in {"cat", "dog", "car"} and row["method"] == "clip"
    assert set(routed[routed["label"] == "car"]["action"]) <= {"review"}
    # files are sized by parquet.file_rows (20 rows = 2 source batches), not one per batch and route
    sizes = [pq.read_metadata(f).num_rows for f in sorted(output.glob("route=*/part-*.parquet"))]
    assert sum(sizes) == 62 and len(list(output.glob("route=output/part-*.parquet"))) <= 4


def test_batch_output_reads_as_one_dataset_in_pyarrow_duckdb_polars(first_run: tuple[Path, RunSummary]) -> None:
    import duckdb
    import polars as pl

    output, _ = first_run
    table = ds.dataset(output, partitioning="hive").to_table()
    routes = set(table.column("route").to_pylist())
    assert table.num_rows == 62 and "dead_letter" in routes and routes & {"output", "quarantine"}
    for field in TYPED:  # the input's Arrow types, in every route
        assert table.schema.field(field.name).type == field.type, field.name
    dead = table.filter(pc.equal(table.column("route"), "dead_letter")).to_pylist()
    truncated = next(r for r in dead if r["id"] == "img-003")
    assert truncated["shard"] == 0 and truncated["camera"] == "cam1" and truncated["exif"] == {"iso": 300,
                                                                                                "tags": ["t3"]}
    assert truncated["taken_at"] == datetime(2026, 5, 1, 0, 3, tzinfo=UTC)
    assert table.schema.field("note").type == pa.string()  # a column only c.parquet has

    relation = duckdb.read_parquet(str(output / "**" / "*.parquet"), hive_partitioning=True)
    assert relation.count("*").fetchall() == [(62,)]
    types = dict(zip(relation.columns, (str(t) for t in relation.dtypes), strict=True))
    assert types["shard"] == "INTEGER" and types["taken_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["exif"] == "STRUCT(iso INTEGER, tags VARCHAR[])" and types["route"] == "VARCHAR"
    counts = dict(relation.aggregate("route, count(*)").fetchall())
    assert counts["dead_letter"] == len(dead) and sum(counts.values()) == 62
    assert relation.filter("id = 'img-003'").select("error_stage, exif.iso").fetchall() == [("decode", 300)]

    frame = pl.scan_parquet(str(output / "**" / "*.parquet"), hive_partitioning=True).collect()
    assert frame.height == 62 and frame.schema["shard"] == pl.Int32
    assert frame.schema["taken_at"] == pl.Datetime("ms", "Europe/Paris")
    assert frame.schema["camera"] in (pl.Categorical, pl.Enum) or isinstance(frame.schema["camera"], pl.Categorical)
    assert frame.schema["exif"] == pl.Struct({"iso": pl.Int32, "tags": pl.List(pl.String)})
    assert frame.filter(pl.col("route") == "dead_letter").height == len(dead)


def test_batch_job_resumes_without_duplicates(config: PipelineConfig, dataset: Path,
                                              first_run: tuple[Path, RunSummary], tmp_path: Path) -> None:
    from cola_moderation.pipeline.jobs.batch import run_batch_job

    output = tmp_path / "out"
    shutil.copytree(first_run[0], output)
    rolls = {f: json.loads(pq.read_metadata(f).metadata[b"cola.batches"])
             for f in output.glob("route=output/part-*.parquet")}
    assert len(rolls) > 1 and sum(map(len, rolls.values())) == 8  # every source batch once
    # as if the job had been killed while writing a roll: its output file missing, its other files left behind
    lost, batches = next(iter(rolls.items()))
    lost_rows = sum(pq.read_metadata(f).num_rows for f in output.glob(f"route=*/{lost.name}"))
    lost.unlink()
    again = run_batch_job(config, inputs=str(dataset / "*.parquet"), output=output, progress=False)
    assert again.skipped_batches == 8 - len(batches) and again.inputs == lost_rows
    frame = read_all(output)
    assert sorted(frame["id"]) == sorted(expected_ids(dataset))  # the redone batches once, no duplicates


def test_batch_command_prints_a_summary(config: PipelineConfig, dataset: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    from cola_moderation.pipeline.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    assert main(["batch", "--config", str(path), "--input", str(dataset / "b.parquet"),
                 "--output", str(tmp_path / "o"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["inputs"] == 20


def test_the_model_pool_is_no_larger_than_the_blocks_the_job_gives_it(config: PipelineConfig) -> None:
    from cola_moderation.pipeline.jobs.batch import BLOCK_BYTES, model_inputs, pool_size

    per_block = BLOCK_BYTES // (64 * 3 * 28 * 28) * 64  # 28 px rows: 6 batches of 64 to a block
    assert model_inputs(per_block, batch_size=64, size=28, files=1) == 1
    assert model_inputs(per_block + 1, batch_size=64, size=28, files=1) == 2
    assert model_inputs(8000, batch_size=64, size=28, files=1) == 21
    assert model_inputs(10, batch_size=64, size=28, files=3) == 3  # no block spans two files
    assert model_inputs(100, batch_size=64, size=224, files=1) == 2  # 224 px: a batch is a block
    two = config.model_copy(update={"ray": config.ray.model_copy(update={"actor_pool_min": 2, "actor_pool_max": 4}),
                                    "model": config.model.model_copy(update={"batch_size": 64})})
    assert pool_size(two, rows=300, size=28, files=1) == (1, 1)
    assert pool_size(two, rows=1000, size=28, files=1) == (2, 3)
    assert pool_size(two, rows=8000, size=28, files=1) == (2, 4)


def test_a_small_job_starts_only_the_actors_it_can_use(config: PipelineConfig, dataset: Path, tmp_path: Path,
                                                       recwarn: pytest.WarningsRecorder) -> None:
    """With ``ray.actor_pool_min: 2`` a one-block job used to start a second actor that never got work, and Ray Data
    warned about it on the console."""
    from cola_moderation.pipeline.jobs.batch import run_batch_job

    two = config.model_copy(update={"ray": config.ray.model_copy(
        update={"worker_num_cpus": 0.5, "actor_pool_min": 2, "actor_pool_max": 2})})
    summary = run_batch_job(two, inputs=str(dataset / "b.parquet"), output=tmp_path / "out", progress=False)
    assert sum(summary.routes.values()) == 20
    assert not [w for w in recwarn if "minimum number of concurrent actors" in str(w.message)]


def test_read_and_decode_fuse_only_where_a_separate_stage_buys_nothing(config: PipelineConfig) -> None:
    from cola_moderation.pipeline.jobs.batch import fuse_read_decode

    def with_ray(**update: object) -> PipelineConfig:
        return config.model_copy(update={"ray": config.ray.model_copy(update=update)})

    half = with_ray(worker_num_cpus=0.5)  # decode tasks of 0.5 CPU, read tasks of 0.25
    assert fuse_read_decode(half, workers=2, private=True, cluster_cpus=2)  # room for one decode task
    assert not fuse_read_decode(half, workers=2, private=True, cluster_cpus=4)  # room for five
    assert not fuse_read_decode(half, workers=2, private=False, cluster_cpus=2)  # a shared cluster may grow
    assert fuse_read_decode(with_ray(read_decode="fused"), workers=1, private=False, cluster_cpus=64)
    assert not fuse_read_decode(with_ray(read_decode="separate"), workers=1, private=True, cluster_cpus=2)


def test_separate_read_and_decode_tasks_route_every_row_as_the_fused_stage_does(
        config: PipelineConfig, dataset: Path, first_run: tuple[Path, RunSummary], tmp_path: Path) -> None:
    """The module's jobs run fused (a private 2-CPU cluster with a 1-CPU actor: room for one decode task); this one
    forces the separate stages, as a shared or larger cluster runs them."""
    from cola_moderation.pipeline.jobs.batch import fuse_read_decode, run_batch_job

    assert fuse_read_decode(config, workers=1, private=True, cluster_cpus=2)  # how first_run ran
    separate = config.model_copy(update={"ray": config.ray.model_copy(update={"read_decode": "separate"})})
    summary = run_batch_job(separate, inputs=str(dataset / "*.parquet"), output=tmp_path / "out", progress=False)
    assert summary.routes == first_run[1].routes
    columns = ["id", "route", "label", "error_message"]
    fused = read_all(first_run[0])[columns].sort_values("id").reset_index(drop=True)
    assert read_all(tmp_path / "out")[columns].sort_values("id").reset_index(drop=True).equals(fused)
