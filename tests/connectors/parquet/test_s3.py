"""Parquet source and sink on S3: a real S3-compatible server (moto in server mode, HTTP on 127.0.0.1) and pyarrow's
own S3 filesystem; nothing of ours is mocked. Credentials and endpoint come from the standard AWS environment
variables, as they would for a user."""

from __future__ import annotations

import collections
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.parquet.sink import ParquetSink
from cola_moderation.connectors.parquet.source import ParquetSource
from tests.connectors.jobs import JPEG, PNG, SERIALIZER, drain

REPO = Path(__file__).resolve().parents[3]
BUCKET = "cola-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[pafs.S3FileSystem]:
    """A moto S3 server on a free loopback port; the AWS_* variables point pyarrow (and subprocesses) at it."""
    server_module = pytest.importorskip("moto.server")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        filesystem = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                                       access_key="testing", secret_key="testing", allow_bucket_creation=True)
        filesystem.create_dir(BUCKET)
        yield filesystem
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def write_inputs(s3: pafs.S3FileSystem, prefix: str, files: int, rows: int, *, real: bool = False
                 ) -> dict[str, str]:
    """Inputs with every 11th image undecodable; ``real``: decodable PNGs, else just the magic bytes."""
    expected = {}
    for f in range(files):
        ids, images = [], []
        for r in range(rows):
            i = f * rows + r
            ids.append(f"s{i}")
            good = i % 11 != 0
            fake = (PNG if i % 2 else JPEG) + bytes([i % 256])
            images.append((png(i) if real else fake) if good else b"not-an-image")
            expected[ids[-1]] = "output" if good else "dead_letter"
        table = pa.table({"id": ids, "image": images, "shard": pa.array([f] * rows, pa.int32())})
        pq.write_table(table, f"{BUCKET}/{prefix}/part-{f}.parquet", filesystem=s3, row_group_size=20)
    return expected


def routes_by_id(s3: pafs.S3FileSystem, prefix: str) -> dict[str, collections.Counter]:
    table = ds.dataset(f"{BUCKET}/{prefix}", filesystem=s3, partitioning="hive").to_table(columns=["id", "route"])
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for record_id, route in zip(table.column("id").to_pylist(), table.column("route").to_pylist(), strict=True):
        counts[route][record_id] += 1
    return counts


def test_source_and_sink_on_s3_resume_without_duplicates(s3: pafs.S3FileSystem) -> None:
    expected = write_inputs(s3, "in", files=2, rows=50)
    config = ParquetConfig(batch_rows=10, file_rows=30)
    out = f"s3://{BUCKET}/out"
    passthrough = ParquetSource(f"s3://{BUCKET}/in", config).passthrough_schema()  # keeps the input's types
    sink = ParquetSink(out, SERIALIZER, config, passthrough=passthrough)
    with ParquetSource(f"s3://{BUCKET}/in", config, skip=sink.is_complete) as source:
        assert drain(source, sink, max_inputs=60) == 60  # stop early, as a killed job would (no close)
    sink.write_roll()  # only complete rolls land; the rest is redone
    resumed = ParquetSink(out, SERIALIZER, config)  # the types are read back from the finished files
    with ParquetSource(f"s3://{BUCKET}/in/*.parquet", config, skip=resumed.is_complete) as source, resumed:
        assert drain(source, resumed) == 40 and source.skipped_batches == 6
    counts = routes_by_id(s3, "out")
    for route in ("output", "dead_letter"):
        assert set(counts[route]) == {i for i, r in expected.items() if r == route}
        assert max(counts[route].values()) == 1, f"{route}: duplicates"
    table = ds.dataset(f"{BUCKET}/out", filesystem=s3, partitioning="hive").to_table()
    assert table.schema.field("shard").type == pa.int32()
    assert {s["file"] for s in table.column("source").to_pylist()} == {f"s3://{BUCKET}/in/part-{f}.parquet"
                                                                      for f in range(2)}
    names = [info.path for info in s3.get_file_info(pafs.FileSelector(f"{BUCKET}/out", recursive=True))]
    assert not [n for n in names if "/." in n], names  # no temp objects left


def test_batch_command_reads_and_writes_s3(s3: pafs.S3FileSystem, tiny_model_dir: Path, tmp_path: Path) -> None:
    """``cola batch`` as a user runs it, with input and output on S3 (a fresh process: its Ray cluster's workers
    inherit the AWS_* environment)."""
    expected = write_inputs(s3, "job-in", files=1, rows=24, real=True)
    config = {"model": {"path": str(tiny_model_dir), "device": "cpu", "batch_size": 8},
              "taxonomy": {"labels": ["cat", "dog"], "templates": ["a photo of a {}."]},
              "method": "clip", "detector": {"enabled": False}, "parquet": {"batch_rows": 8},
              "ray": {"worker_num_cpus": 1, "num_cpus": 2}}
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "cola_moderation.pipeline.cli", "batch", "--config", str(path),
               "--input", f"s3://{BUCKET}/job-in/", "--output", f"s3://{BUCKET}/job-out", "--json"]
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["inputs"] == 24
    assert not list(workdir.iterdir()), "a URI output must not create a local folder (s3:/...) in the cwd"
    counts = routes_by_id(s3, "job-out")
    assert sorted(i for c in counts.values() for i in c) == sorted(expected)  # every input exactly once
    assert set(counts["dead_letter"]) == {i for i, r in expected.items() if r == "dead_letter"}
