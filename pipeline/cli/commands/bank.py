"""``cola bank add BANK (--input PARQUET | --decisions D) [--label L] [--config C]``: append reviewed items to a hash
bank.

``--input``: a Parquet of ids and images (``--id-column`` / ``--image-column``; bytes, or a local path / ``file://``
URI relative to the Parquet file). ``--decisions``: a ``cola review`` decisions dataset; the newest decision per id
counts, only the kinds in ``--decision`` (default ``confirm``, ``relabel``, ``adversarial``: what a reviewer found
bad) are added, labelled with their ``final_label``, and each image is read back from the input row its record names
(as ``cola finetune`` does; Kafka inputs carry no file and are skipped, counted). Each image is decoded as the pipeline
decodes it under ``--config`` and its PDQ and MD5 rows are appended to ``BANK`` (CSV or Parquet, local or a
``pyarrow.fs`` URI; created when missing) with its ``label`` and ``id``. Hashes already in the bank are skipped, so
re-running on the same reviewed items adds nothing. The bank is rewritten whole (a new file beside it, then renamed
over it where the filesystem allows), so a failed run leaves the old bank intact. Exit 1 if an image could not be
read or decoded (the others are still added).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cola_moderation.connectors.filesystem import location
from cola_moderation.operators.backbones.registry import load_geometry
from cola_moderation.operators.errors import ConfigError, DecodeError
from cola_moderation.operators.matching.banks import BankError, read_table
from cola_moderation.operators.matching.signals import Hasher
from cola_moderation.pipeline.cli.commands.hash import hash_bytes
from cola_moderation.pipeline.runtime.config import PipelineConfig, load_config

BANK_COLUMNS = ("signal_type", "hash", "label", "id")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="bank_action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="append the PDQ + MD5 of reviewed images to a bank file")
    add.add_argument("bank", metavar="BANK", help="bank file (.csv or .parquet; local path or pyarrow.fs URI)")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="Parquet file of reviewed items (ids and images)")
    source.add_argument("--decisions", help="a cola review decisions dataset (DIR with route=decisions/)")
    add.add_argument("--decision", action="append", choices=("confirm", "relabel", "adversarial", "allow"),
                     help="with --decisions: the decision kinds to bank (repeatable; default confirm, relabel, "
                          "adversarial)")
    add.add_argument("--id-column", default="id")
    add.add_argument("--image-column", default="image", help="image bytes, or paths / file:// URIs")
    add.add_argument("--label", default=None, help="label of every added row (default: empty)")
    add.add_argument("--label-column", default=None, help="take each row's label from this input column")
    add.add_argument("--config", default="reference", help="pipeline config whose decoding to reproduce")


def read_payload(value: object, base: Path | None) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        path = Path(value.removeprefix("file://"))
        if not path.is_absolute() and base is not None:
            path = base / path
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DecodeError(f"cannot read {path}: {exc.strerror}") from None
    raise DecodeError(f"image column holds {type(value).__name__}, expected bytes or a path")


def existing_rows(bank: str) -> list[dict[str, str | None]]:
    try:
        table = read_table(bank, name=bank)
    except BankError as exc:
        if "file not found" in str(exc):
            return []
        raise
    columns = [c for c in BANK_COLUMNS if c in table.column_names]
    rows = table.select(columns).to_pylist()
    return [{c: (None if row.get(c) is None else str(row[c])) for c in BANK_COLUMNS} for row in rows]


def write_rows(bank: str, rows: list[dict[str, str | None]]) -> None:
    target = location(bank)
    temporary = target.path + ".tmp"
    if bank.split("?", 1)[0].lower().endswith((".parquet", ".pq")):
        table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in BANK_COLUMNS})
        with target.filesystem.open_output_stream(temporary) as stream:
            pq.write_table(table, stream)
    else:
        text = io.StringIO()
        writer = csv.DictWriter(text, BANK_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: r[c] or "" for c in BANK_COLUMNS} for r in rows)
        with target.filesystem.open_output_stream(temporary) as stream:
            stream.write(text.getvalue().encode())
    target.filesystem.move(temporary, target.path)


def reviewed_items(args: argparse.Namespace, max_bytes: int) -> tuple[list[object], list[object], list[object]]:
    """ids, payloads (bytes; ``None`` where unreadable) and labels of a decisions dataset's newest decisions."""
    from cola_moderation.pipeline.research.reviewed import latest_per_id, read_decisions, source_images

    kinds = set(args.decision or ("confirm", "relabel", "adversarial"))
    rows = [r for r in latest_per_id(read_decisions(Path(args.decisions))) if r["decision"] in kinds]
    skipped: dict[str, int] = {"no_input_file": 0, "unreadable": 0}
    payloads = source_images([r["source"] for r in rows], image_column=args.image_column, skipped=skipped,
                             max_bytes=max_bytes)
    if any(skipped.values()):
        print(f"cola bank add: skipped {skipped}", file=sys.stderr)
    labels = [args.label or r.get("final_label") for r in rows]
    return [r["id"] for r in rows], list(payloads), labels


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, calibrate=False)
    size = load_geometry(config.model).size
    if args.decisions:
        ids, images, labels = reviewed_items(args, config.decode.max_bytes)
        return add_items(args, ids, images, labels, size=size, config=config, base=None)
    source = location(args.input)
    try:
        table = pq.read_table(source.path, filesystem=source.filesystem)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"cannot read --input {args.input}: {exc}") from None
    for column in (args.id_column, args.image_column, args.label_column):
        if column is not None and column not in table.column_names:
            raise ConfigError(f"--input {args.input} has no column {column!r} (has {table.column_names})")
    ids = table.column(args.id_column).to_pylist()
    images = table.column(args.image_column).to_pylist()
    labels = table.column(args.label_column).to_pylist() if args.label_column else [args.label] * len(ids)
    return add_items(args, ids, images, labels, size=size, config=config,
                     base=source.parent_dir() if source.local else None)


def add_items(args: argparse.Namespace, ids: list[object], images: list[object], labels: list[object], *, size: int,
              config: PipelineConfig, base: Path | None) -> int:
    rows = existing_rows(args.bank)
    seen = {(r["signal_type"], r["hash"]) for r in rows}
    hasher = Hasher()
    added, failed = 0, False
    for item_id, value, label in zip(ids, images, labels, strict=True):
        try:
            if value is None:
                raise DecodeError("no image")
            hashes = hash_bytes(read_payload(value, base), size=size, config=config.decode, hasher=hasher)
        except DecodeError as exc:
            failed = True
            print(f"cola bank add: {item_id}: {exc}", file=sys.stderr)
            continue
        for signal, value_hex in (("pdq", hashes.pdq), ("md5", hashes.md5)):
            if value_hex is not None and (signal, value_hex) not in seen:
                seen.add((signal, value_hex))
                rows.append({"signal_type": signal, "hash": value_hex, "label": None if label is None else str(label),
                             "id": str(item_id)})
                added += 1
    write_rows(args.bank, rows)
    print(f"cola bank add: {added} rows added to {args.bank} ({len(rows)} in all)", file=sys.stderr)
    return 1 if failed else 0
