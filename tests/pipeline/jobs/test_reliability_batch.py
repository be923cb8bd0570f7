"""Reliability (red team) of ``cola batch`` on a real Ray cluster: hostile image paths leak no bytes into any output
file, and a corrupt / non-Parquet / truncated file in the glob is a clear skip with a reason, not the end of the job
(or, with ``parquet.on_bad_file: fail``, one error line before anything starts)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cola_moderation.connectors.parquet.source import BadInputFileError
from cola_moderation.pipeline.runtime.config import PipelineConfig, parse_config
from tests.connectors.parquet.test_reliability_image_paths import all_bytes_under, hostile_dataset


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def batch_config(tiny_model_dir: Path, **parquet: object) -> PipelineConfig:
    return parse_config({
        "model": {"path": str(tiny_model_dir), "device": "cpu", "batch_size": 8},
        "taxonomy": {"labels": ["cat", "dog", "car"]}, "method": "clip", "detector": {"enabled": False},
        "parquet": {"batch_rows": 8, "compression": "none", **parquet},
        "ray": {"worker_num_cpus": 1, "num_cpus": 2},
    })


def test_batch_job_leaks_no_refused_file_and_skips_bad_files(tiny_model_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from cola_moderation.pipeline.jobs.batch import run_batch_job

    hostile, cells, forbidden = hostile_dataset(tmp_path, monkeypatch)
    directory = hostile.parent
    pq.write_table(pa.table({"id": [f"g{i}" for i in range(20)], "image": [png(i) for i in range(20)]}),
                   directory / "good.parquet")
    (directory / "notes.parquet").write_text("id,image\n1,/etc/passwd\n")  # not Parquet at all
    (directory / "empty.parquet").write_bytes(b"")
    whole = (directory / "good.parquet").read_bytes()
    (directory / "truncated.parquet").write_bytes(whole[: len(whole) // 2])
    pq.write_table(pa.table({"id": ["x"], "picture": [png(0)]}), directory / "other-columns.parquet")

    output = tmp_path / "out"
    summary = run_batch_job(batch_config(tiny_model_dir), inputs=str(directory / "*.parquet"), output=output,
                            progress=False)
    skipped = {Path(file).name: reason for file, reason in summary.skipped_files}
    assert set(skipped) == {"notes.parquet", "empty.parquet", "truncated.parquet", "other-columns.parquet"}
    assert all("not a readable Parquet file" in skipped[name] for name in ("notes.parquet", "empty.parquet",
                                                                             "truncated.parquet"))
    assert "no column 'image'" in skipped["other-columns.parquet"]
    assert summary.inputs == 20 + len(cells)  # every row of every readable file, exactly once
    rows = ds.dataset(output, partitioning="hive").to_table().to_pandas()
    assert sorted(rows["id"]) == sorted([f"g{i}" for i in range(20)] + [f"r{i}" for i in range(len(cells))])
    dead = rows[rows["route"] == "dead_letter"]
    assert len(dead) >= len(cells) - 1  # every refused location (and the 'ok.png' non-image)
    written = all_bytes_under(output)
    for secret in forbidden:
        assert secret not in written, f"bytes of a refused file leaked into {output}: {secret[:20]!r}"


def test_on_bad_file_fail_names_the_file_before_starting(tiny_model_dir: Path, tmp_path: Path) -> None:
    from cola_moderation.pipeline.jobs.batch import run_batch_job

    pq.write_table(pa.table({"image": [png(1)]}), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(BadInputFileError, match=r"b\.parquet: not a readable Parquet file.*on_bad_file: fail"):
        run_batch_job(batch_config(tiny_model_dir, on_bad_file="fail"), inputs=str(tmp_path / "*.parquet"),
                      output=tmp_path / "out", progress=False)
