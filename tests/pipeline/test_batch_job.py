"""End to end: cola batch on a real (private, loopback) Ray cluster with the tiny model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cola_moderation.pipeline.config import PipelineConfig, parse_config


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (36, 48, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


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
        rows.append({"id": f"img-{i:03d}", "image": image, "uploader": f"user{i % 4}", "score_hint": float(i)})
    pq.write_table(pa.Table.from_pylist(rows[:40]), directory / "a.parquet", row_group_size=25)
    pq.write_table(pa.Table.from_pylist(rows[40:]), directory / "b.parquet")
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
        "parquet": {"batch_rows": 10},
        "ray": {"worker_num_cpus": 1, "num_cpus": 2},
    })


def read_all(output: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return tuple(pd.read_parquet(output / name) if any((output / name).glob("*.parquet")) else pd.DataFrame()
                 for name in ("output", "quarantine", "dead_letter"))  # type: ignore[return-value]


def test_batch_job_routes_every_input_once_and_resumes(config: PipelineConfig, dataset: Path, tmp_path: Path) -> None:
    from cola_moderation.pipeline.batch_job import run_batch_job

    output = tmp_path / "out"
    summary = run_batch_job(config, inputs=str(dataset / "*.parquet"), output=output, progress=False)
    out, quarantine, dead = read_all(output)
    ids = [*out.get("id", []), *quarantine.get("id", []), *dead["id"]]
    expected = {f"img-{i:03d}" for i in range(60)} | {f"{(dataset / 'c.parquet').resolve()}:{row}" for row in (0, 1)}
    assert sorted(ids) == sorted(expected)  # exactly once each
    assert summary.inputs == 62 and summary.routes["dead_letter"] == len(dead)
    assert summary.first_output_s is not None and 0 < summary.first_output_s <= summary.seconds

    # corrupt rows are dead letters with the original bytes and a specific error
    by_id = dead.set_index("id")
    assert "truncated" in by_id.loc["img-003", "error_message"]
    assert by_id.loc["img-003", "payload"] == png(3)[:50]
    assert "empty" in by_id.loc["img-007", "error_message"]
    assert by_id.loc["img-059", "error_stage"] == "source"
    assert by_id.loc[f"{(dataset / 'c.parquet').resolve()}:1", "error_stage"] == "source"

    # outputs carry the record schema and the passthrough columns
    routed = pd.concat([frame for frame in (out, quarantine) if len(frame)])
    row = routed.set_index("id").loc["img-001"]
    assert row["uploader"] == "user1" and row["score_hint"] == 1.0
    assert row["source"] == {"topic": None, "partition": None, "offset": None,
                             "file": str((dataset / "a.parquet").resolve()), "row": 1, "request": None}
    assert row["label"] in {"cat", "dog", "car"} and row["method"] == "clip"
    assert set(routed[routed["label"] == "car"]["action"]) <= {"review"}

    # resume: drop two finished batches (as if the job had been killed before writing them) and rerun
    parts = sorted((output / "output").glob("part-*.parquet"))
    for part in parts[:2]:
        key = part.name[len("part-"):-len(".parquet")]
        for directory in ("output", "quarantine", "dead_letter"):
            (output / directory / f"part-{key}.parquet").unlink(missing_ok=True)
    again = run_batch_job(config, inputs=str(dataset / "*.parquet"), output=output, progress=False)
    assert again.skipped_batches == len(parts) - 2
    assert 0 < again.inputs < 62
    out2, quarantine2, dead2 = read_all(output)
    ids2 = [*out2.get("id", []), *quarantine2.get("id", []), *dead2["id"]]
    assert sorted(ids2) == sorted(expected)


def test_batch_command_prints_a_summary(config: PipelineConfig, dataset: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    from cola_moderation.pipeline.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    assert main(["batch", "--config", str(path), "--input", str(dataset / "b.parquet"),
                 "--output", str(tmp_path / "o"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["inputs"] == 20
