"""ParquetSource over real files: bytes and path columns, ids, metadata, globs/dirs, bounded batches, resume skip."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.errors import MalformedRecordError
from cola_moderation.connectors.parquet.source import ParquetSource, expand_inputs
from cola_moderation.connectors.records import FilePosition
from cola_moderation.operators.errors import ConfigError


def _all(source: ParquetSource) -> list:  # type: ignore[type-arg]
    batches = []
    while (batch := source.poll()) is not None:
        batches.append(batch)
    return batches


def test_binary_column_ids_metadata_and_positions(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": ["x", None, "z"], "image": [b"\x89PNG1", b"\xff\xd8\xff2", None],
                             "user": ["u1", "u2", "u3"], "n": [1, 2, 3]}), path)
    batches = _all(ParquetSource(path, ParquetConfig(batch_rows=2)))
    assert [len(b) for b in batches] == [2, 1]
    first = batches[0].records
    assert [r.id for r in first] == ["x", f"{path.resolve()}:1"]  # null id -> file:row
    assert first[0].payload == b"\x89PNG1" and dict(first[0].metadata) == {"user": "u1", "n": 1}
    assert first[1].source == FilePosition(str(path.resolve()), 1)
    dead = batches[1].dead_letters[0]  # null image: dead letter, not an exception
    assert dead.record.id == "z" and dead.error_class == MalformedRecordError.__name__ and dead.error_stage == "source"
    assert "image is null" in dead.error_message
    assert batches[0].key != batches[1].key and batches[1].key.endswith("-000000000002")


def test_path_and_file_uri_column(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "one.png").write_bytes(b"\x89PNGone")
    (tmp_path / "two.jpg").write_bytes(b"\xff\xd8\xfftwo")
    path = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"image": ["img/one.png", f"file://{tmp_path / 'two.jpg'}", "missing.png",
                                       "s3://bucket/x.png"]}), path)
    (batch,) = _all(ParquetSource(path))
    assert [r.payload for r in batch.records] == [b"\x89PNGone", b"\xff\xd8\xfftwo"]
    assert batch.records[0].id == f"{path.resolve()}:0"
    messages = [d.error_message for d in batch.dead_letters]
    assert "cannot read image" in messages[0] and "missing.png" in messages[0]
    assert "only local paths and file:// URIs" in messages[1]
    assert batch.dead_letters[0].record.payload == b"missing.png"  # the original cell


def test_dirs_globs_and_errors(tmp_path: Path) -> None:
    for name in ("b/2.parquet", "a/1.parquet", "a/_tmp/3.parquet", "a/.hidden.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"image": [b"x"]}), tmp_path / name)
    assert [p.name for p in expand_inputs(tmp_path)] == ["1.parquet", "2.parquet"]
    assert [p.name for p in expand_inputs(str(tmp_path / "*" / "*.parquet"))] == ["1.parquet", "2.parquet"]
    assert len(expand_inputs([tmp_path / "a" / "1.parquet", str(tmp_path / "**" / "1.parquet")])) == 1
    with pytest.raises(ConfigError, match="no such file"):
        expand_inputs(tmp_path / "nope")
    with pytest.raises(ConfigError, match="matches no Parquet files"):
        expand_inputs(str(tmp_path / "*.csv"))
    with pytest.raises(ConfigError, match="has no column 'picture'"):
        _all(ParquetSource(tmp_path / "a" / "1.parquet", ParquetConfig(image_column="picture")))
    pq.write_table(pa.table({"image": [1]}), tmp_path / "int.parquet")
    with pytest.raises(ConfigError, match="must be binary"):
        _all(ParquetSource(tmp_path / "int.parquet"))


def test_batches_bounded_by_bytes_and_resume_skip(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    rows = 100
    pq.write_table(pa.table({"image": [bytes([i]) * 10_000 for i in range(rows)]}), path, row_group_size=30,
                   compression="none")
    source = ParquetSource(path, ParquetConfig(batch_rows=64, max_batch_bytes=50_000))
    batches = _all(source)
    assert max(len(b) for b in batches) <= 5 and sum(len(b) for b in batches) == rows
    assert max(b.nbytes for b in batches) <= 50_000
    keys = [b.key for b in batches]
    done = set(keys[:8])  # the first row group (30 rows = 6 batches) and part of the second
    again = ParquetSource(path, ParquetConfig(batch_rows=64, max_batch_bytes=50_000), skip=done.__contains__)
    rest = _all(again)
    assert [b.key for b in rest] == keys[8:]
    assert again.skipped_batches == 8
