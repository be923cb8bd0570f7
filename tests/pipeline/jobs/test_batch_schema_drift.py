"""cola batch over files whose id and passthrough types drift: the job runs and every input row ends in exactly one
route (parquet.on_schema_conflict: cast, the default)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cola_moderation.pipeline.runtime.config import parse_config


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_int64_and_string_ids_and_drifting_columns_each_end_in_one_route(tmp_path: Path,
                                                                         tiny_model_dir: Path) -> None:
    from cola_moderation.pipeline.jobs.batch import run_batch_job

    extra = pa.struct([("iso", pa.int32())])
    images = [png(i) for i in range(8)]
    pq.write_table(pa.table({"id": pa.array(range(8), pa.int64()), "image": images,
                             "shop": pa.array(range(8), pa.int64()),
                             "extra": pa.array([{"iso": i} for i in range(8)], extra)}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(8)], "image": images, "shop": [f"s{i}" for i in range(8)],
                             "extra": pa.array([{"iso": i} for i in range(8)], extra)}), tmp_path / "b.parquet")
    pq.write_table(pa.table({"id": pa.array(range(100, 108), pa.int64()), "image": images,
                             "extra": pa.array(range(8), pa.int64())}), tmp_path / "c.parquet")
    config = parse_config({
        "model": {"path": str(tiny_model_dir), "device": "cpu", "batch_size": 8},
        "taxonomy": {"labels": ["cat", "dog", "car"]}, "method": "clip", "detector": {"enabled": False},
        "parquet": {"batch_rows": 8}, "ray": {"worker_num_cpus": 1, "num_cpus": 2},
    })
    output = tmp_path / "out"
    summary = run_batch_job(config, inputs=str(tmp_path / "*.parquet"), output=output, progress=False)
    frame = ds.dataset(output, partitioning="hive").to_table().to_pandas()
    expected = [str(i) for i in range(8)] + [f"b{i}" for i in range(8)] + [str(i) for i in range(100, 108)]
    assert sorted(frame["id"]) == sorted(expected)  # each input row exactly once
    assert summary.inputs == 24 and summary.routes["dead_letter"] == 8
    dead = frame[frame["route"] == "dead_letter"]
    assert sorted(dead["id"]) == [str(i) for i in range(100, 108)]
    assert set(dead["error_class"]) == {"SchemaConflictError"}
    assert [Path(f).name for f, _reason in summary.skipped_files] == ["c.parquet"]
    routed = frame[frame["route"] != "dead_letter"].set_index("id")
    assert routed.loc["3", "shop"] == "3" and routed.loc["b3", "shop"] == "s3"  # int64 and string -> string
