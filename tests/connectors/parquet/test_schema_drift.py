"""Schema drift across input files: ids of any type are strings; conflicting passthrough columns follow
``parquet.on_schema_conflict`` and no row is dropped silently."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.parquet.source import ParquetSource, expand_inputs, resolve_passthrough
from cola_moderation.operators.errors import ConfigError

PNG = b"\x89PNG\r\n\x1a\nfake"
EXTRA = pa.struct([("iso", pa.int32())])


def write_drifting_inputs(directory: Path) -> Path:
    """a: int64 ids, b: string ids with ``shop`` as string, c: int32 ids with ``extra`` as int64 (a struct
    elsewhere: no common type, not castable to string)."""
    directory.mkdir(parents=True, exist_ok=True)
    images = [PNG] * 10
    pq.write_table(pa.table({"id": pa.array(range(10), pa.int64()), "image": images,
                             "shop": pa.array(range(10), pa.int64()),
                             "extra": pa.array([{"iso": i} for i in range(10)], EXTRA)}), directory / "a.parquet")
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(10)], "image": images, "shop": [f"s{i}" for i in range(10)],
                             "extra": pa.array([{"iso": i} for i in range(10)], EXTRA)}), directory / "b.parquet")
    pq.write_table(pa.table({"id": pa.array(range(100, 110), pa.int32()), "image": images,
                             "shop": pa.array(range(10), pa.int64()), "extra": pa.array(range(10), pa.int64())}),
                   directory / "c.parquet")
    return directory


def test_cast_joins_what_casts_and_dead_letters_the_rest(tmp_path: Path) -> None:
    directory = write_drifting_inputs(tmp_path / "in")
    files = expand_inputs(str(directory / "*.parquet"))
    schema, conflicts = resolve_passthrough(files, ParquetConfig())
    assert schema.field("shop").type == pa.string() and schema.field("extra").type == EXTRA
    assert list(conflicts) == [files[2].uri] and "column 'extra' is int64" in conflicts[files[2].uri]

    with ParquetSource(files, ParquetConfig(), conflicts=conflicts) as source:
        batches = list(iter(source.poll, None))
    records = [r for b in batches for r in b.records]
    dead = [d for b in batches for d in b.dead_letters]
    assert sorted(r.id for r in records) == sorted([str(i) for i in range(10)] + [f"b{i}" for i in range(10)])
    assert sorted(d.record.id for d in dead) == [str(i) for i in range(100, 110)]  # every row of c, none dropped
    assert {d.error_class for d in dead} == {"SchemaConflictError"} and {d.error_stage for d in dead} == {"source"}
    assert dead[0].record.payload == PNG


def test_skip_file_and_fail(tmp_path: Path) -> None:
    directory = write_drifting_inputs(tmp_path / "in")
    files = expand_inputs(str(directory / "*.parquet"))
    schema, conflicts = resolve_passthrough(files, ParquetConfig(on_schema_conflict="skip_file"))
    assert schema.field("shop").type == pa.int64()  # the first file's type; b's string column conflicts
    assert sorted(conflicts) == [files[1].uri, files[2].uri]
    with pytest.raises(ConfigError, match=r"column 'shop' has incompatible types .*on_schema_conflict: fail"):
        resolve_passthrough(files, ParquetConfig(on_schema_conflict="fail"))


def test_id_type_alone_never_conflicts(tmp_path: Path) -> None:
    for name, ids in (("a", pa.array([1, 2], pa.int64())), ("b", pa.array(["x", "y"]))):
        pq.write_table(pa.table({"id": ids, "image": [PNG, PNG]}), tmp_path / f"{name}.parquet")
    for mode in ("cast", "skip_file", "fail"):
        config = ParquetConfig(on_schema_conflict=mode)  # type: ignore[arg-type]
        files = expand_inputs(str(tmp_path / "*.parquet"))
        assert resolve_passthrough(files, config) == (pa.schema([]), {})
        with ParquetSource(files, config) as source:
            assert sorted(r.id for b in iter(source.poll, None) for r in b.records) == ["1", "2", "x", "y"]
