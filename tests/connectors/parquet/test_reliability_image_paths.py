"""Reliability (red team): a Parquet image column naming files outside its directory leaks nothing.

Real files, the real ParquetSource and ParquetSink (uncompressed, so a leaked byte would be visible in the raw files).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.parquet.sink import ParquetSink
from cola_moderation.connectors.parquet.source import ParquetSource
from cola_moderation.connectors.records import Batch
from tests.connectors.jobs import SERIALIZER

SECRET = b"TOP-SECRET-7f3a9c-do-not-leak\n"


def hostile_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str], list[bytes]]:
    """A dataset directory whose image column names files outside it, a FIFO, a device and escaping symlinks.
    Returns (parquet file, the cells, byte strings that must never appear in any output)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(SECRET)
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_bytes(b"ray-token-" + SECRET)
    monkeypatch.setenv("HOME", str(home))
    data = tmp_path / "data" / "nested"
    data.mkdir(parents=True)
    (data / "ok.png").write_bytes(b"\x89PNG-inside-root")
    os.mkfifo(data / "pipe.png")
    (data / "escape.png").symlink_to(outside / "secret.png")
    (data / "zero.png").symlink_to("/dev/zero")
    (data / "linkdir").symlink_to(outside, target_is_directory=True)
    depth = len(data.resolve().parts) - 1
    cells = [
        "ok.png",
        "/etc/passwd",
        "../" * depth + "etc/hostname",
        "file:///etc/shadow",
        "/proc/self/environ",
        "~/.ray/auth_token",
        str(home / ".ray" / "auth_token"),
        "pipe.png",
        "/dev/zero",
        "zero.png",
        "escape.png",
        "linkdir/secret.png",
        f"file://{outside / 'secret.png'}",
        "../../outside/secret.png",
        "s3://bucket/key.png",
        "file://evil.example/etc/passwd",
        ".",
    ]
    path = data / "hostile.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(cells))], "image": cells}), path,
                   compression="none")
    forbidden = [SECRET.strip()]
    for name in ("/etc/passwd", "/etc/hostname", "/etc/shadow", "/proc/self/environ"):
        try:
            content = Path(name).read_bytes()
        except OSError:
            continue
        lines = [line for line in content.replace(b"\0", b"\n").splitlines() if len(line) >= 6]
        forbidden += lines[:20]
    return path, cells, forbidden


def all_bytes_under(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def test_refused_image_paths_leak_no_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, cells, forbidden = hostile_dataset(tmp_path, monkeypatch)
    config = ParquetConfig(compression="none")
    batches: list[Batch] = []

    def read() -> None:
        with ParquetSource(path, config, max_image_bytes=1 << 20) as source:
            while (batch := source.poll()) is not None:
                batches.append(batch)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "reading the hostile dataset hung (FIFO or /dev/zero read without bound)"

    (batch,) = batches
    assert [r.id for r in batch.records] == ["r0"] and batch.records[0].payload == b"\x89PNG-inside-root"
    reasons = {d.record.id: d.error_message for d in batch.dead_letters}
    assert len(reasons) == len(cells) - 1
    rule = {cell: reasons[f"r{i}"] for i, cell in enumerate(cells) if i}
    for cell in ("/etc/passwd", "file:///etc/shadow", "/proc/self/environ", "/dev/zero", "escape.png",
                 "linkdir/secret.png", "../../outside/secret.png", f"file://{tmp_path / 'outside' / 'secret.png'}"):
        assert "rule outside-root" in rule[cell], rule[cell]
    assert "rule outside-root" in rule["../" * (len(path.parent.resolve().parts) - 1) + "etc/hostname"]
    assert "rule not-regular-file" in rule["pipe.png"] and "FIFO" in rule["pipe.png"]
    assert "rule outside-root" in rule["zero.png"]  # the symlink's target is /dev/zero
    assert "rule not-regular-file" in rule["."]
    assert "rule scheme" in rule["s3://bucket/key.png"] and "rule scheme" in rule["file://evil.example/etc/passwd"]
    assert "No such file" in rule["~/.ray/auth_token"]  # no ~ expansion: a relative name inside the root
    # the dead letter carries the cell (the location), never the file's content
    assert {d.record.payload for d in batch.dead_letters} == {c.encode() for c in cells[1:]}

    output = tmp_path / "out"
    sink = ParquetSink(output, SERIALIZER, config)
    for dead in batch.dead_letters:
        sink.add_dead_letter(dead)
    sink.flush(batch)
    sink.close()
    written = all_bytes_under(output)
    assert b"inside-root" not in written  # sanity: the search sees uncompressed rows
    assert b"/etc/passwd" in written  # ... the cells are there
    for secret in forbidden:
        assert secret not in written, f"bytes of a refused file leaked: {secret[:20]!r}"


def test_image_roots_and_size_cap(tmp_path: Path) -> None:
    shared = tmp_path / "shared-images"
    shared.mkdir()
    (shared / "a.png").write_bytes(b"A" * 100)
    (shared / "big.png").write_bytes(b"B" * 5000)
    data = tmp_path / "data"
    data.mkdir()
    path = data / "p.parquet"
    pq.write_table(pa.table({"image": [str(shared / "a.png"), str(shared / "big.png")]}), path)

    (batch,) = list(iter(ParquetSource(path, max_image_bytes=1000).poll, None))
    assert [d.error_message.split("refused ")[-1][:18] for d in batch.dead_letters] == ["(rule outside-root"] * 2

    roots = ParquetConfig(image_roots=(str(shared),))
    (batch,) = list(iter(ParquetSource(path, roots, max_image_bytes=1000).poll, None))
    assert [r.payload for r in batch.records] == [b"A" * 100]
    (dead,) = batch.dead_letters
    assert "rule too-large" in dead.error_message and "5000 bytes > decode.max_bytes=1000" in dead.error_message
