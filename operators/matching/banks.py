"""Hash bank files: CSV or Parquet, local or on any ``pyarrow.fs`` filesystem, validated row by row.

Two layouts are read:

* ours: ``signal_type`` (``pdq`` | ``md5``), ``hash`` (hex; PDQ 64 digits, MD5 32), optional ``label``
  (``cola hash --bank-rows`` writes it);
* a ThreatExchange / Hasher-Matcher-Actioner export, as ``threatexchange dataset -P --csv`` writes it:
  ``signal_type, signal_str, collab, category, tags``. ``video_md5`` is read as ``md5`` (an MD5 of the file bytes),
  ``tags`` (space-separated) becomes the label, and rows whose ``category`` is ``NEGATIVE_CLASS`` (opinions that
  the content is *not* what the collaboration is about) are skipped.

Anything else fails with one line naming the bank, the file and the 1-based data row (header not counted), e.g.
``bank 'known': banks/known.csv row 3: pdq hash must be 64 hex digits, got 63``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cola_moderation.operators.errors import ConfigError
from cola_moderation.operators.matching.config import BankConfig
from cola_moderation.operators.matching.signals import MD5_HEX_LENGTH, PDQ_HEX_LENGTH, hex_to_words

SIGNAL_TYPES = {"pdq": "pdq", "md5": "md5", "video_md5": "md5"}
"""Accepted ``signal_type`` values (case-insensitive) -> the signal they name."""
HEX_LENGTH = {"pdq": PDQ_HEX_LENGTH, "md5": MD5_HEX_LENGTH}
NEGATIVE_CATEGORY = "NEGATIVE_CLASS"
_HEX = re.compile(r"[0-9a-f]*")
_COLUMNS = ("signal_type", "hash", "label", "signal_str", "collab", "category", "tags")


class BankError(ConfigError):
    """A bank file is missing, unreadable or has a bad row."""


@dataclass(frozen=True)
class Bank:
    """One loaded bank: ``pdq_words`` ``[n, 4]`` uint64 with their hex and labels, and the MD5 hex -> label map."""

    name: str
    config: BankConfig
    uri: str
    pdq_hex: list[str] = field(default_factory=list)
    pdq_labels: list[str | None] = field(default_factory=list)
    pdq_words: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.uint64))
    md5: dict[str, str | None] = field(default_factory=dict)
    skipped: int = 0
    """Rows of a ThreatExchange export left out as ``NEGATIVE_CLASS``."""

    def __len__(self) -> int:
        return len(self.pdq_hex) + len(self.md5)


def resolve_path(path: str, base_dir: Path | None) -> str:
    """``path`` relative to ``base_dir`` when it is a relative local path; URIs and absolute paths as given."""
    if "://" in path or base_dir is None or Path(path).is_absolute():
        return path
    return str((base_dir / path).resolve())


def _open(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri and not uri.startswith("file://"):
        filesystem, path = pafs.FileSystem.from_uri(uri)
        return filesystem, path
    return pafs.LocalFileSystem(), uri.removeprefix("file://")


def read_table(uri: str, *, name: str = "?") -> pa.Table:
    """The bank file at ``uri`` as a table of string columns."""
    where = f"bank {name!r}: {uri}"
    lowered = uri.split("?", 1)[0].lower()
    try:
        filesystem, path = _open(uri)
        if lowered.endswith((".parquet", ".pq")):
            table = pq.read_table(path, filesystem=filesystem)
        elif lowered.endswith((".csv", ".csv.gz", ".tsv")):
            options = pacsv.ReadOptions(block_size=1 << 24)
            parse = pacsv.ParseOptions(delimiter="\t" if lowered.endswith(".tsv") else ",")
            convert = pacsv.ConvertOptions(column_types=dict.fromkeys(_COLUMNS, pa.string()),
                                           strings_can_be_null=True)
            with filesystem.open_input_stream(path, compression="detect") as stream:
                table = pacsv.read_csv(stream, read_options=options, parse_options=parse, convert_options=convert)
        else:
            raise BankError(f"{where}: unknown file type (expected .csv, .csv.gz, .tsv, .parquet or .pq)")
    except BankError:
        raise
    except FileNotFoundError:
        raise BankError(f"{where}: file not found") from None
    except (OSError, pa.ArrowException) as exc:
        message = " ".join(str(exc).split())
        raise BankError(f"{where}: cannot read: {message}") from None
    return table


def _strings(table: pa.Table, column: str) -> pa.Array:
    values = table.column(column).combine_chunks()
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        values = pc.cast(values, pa.string())
    return pc.fill_null(values, "")


def _row_error(signal: str, text: str, hash_column: str) -> str:
    """What is wrong with one row (a row the vectorised checks rejected)."""
    kind = SIGNAL_TYPES.get(signal.strip().lower())
    if kind is None:
        return f"unknown signal_type {signal!r} (expected one of {sorted(SIGNAL_TYPES)})"
    text = text.strip().lower()
    if not text:
        return f"empty {hash_column}"
    if not _HEX.fullmatch(text):
        bad = next(ch for ch in text if ch not in "0123456789abcdef")
        return f"{kind} hash is not hex (character {bad!r} in {text[:70]!r})"
    return f"{kind} hash must be {HEX_LENGTH[kind]} hex digits, got {len(text)}"


def load_bank(name: str, config: BankConfig, *, uri: str | None = None) -> Bank:
    """Read and validate bank ``name`` (``uri``: its resolved location, default ``config.path``). The checks run
    column-wise (about a second per million rows); the first bad row is reported."""
    uri = uri or config.path
    table = read_table(uri, name=name)
    columns = set(table.column_names)
    where = f"bank {name!r}: {uri}"
    exported = "hash" not in columns and "signal_str" in columns
    hash_column = "signal_str" if exported else "hash"
    missing = [c for c in ("signal_type", hash_column) if c not in columns]
    if missing:
        raise BankError(f"{where}: missing column(s) {missing} (have {sorted(columns)}; expected signal_type, hash "
                        "and optional label, or a ThreatExchange export: signal_type, signal_str, collab, category, "
                        "tags)")
    raw_types, raw_hashes = _strings(table, "signal_type"), _strings(table, hash_column)
    types = pc.utf8_lower(pc.utf8_trim_whitespace(raw_types))
    hashes = pc.utf8_lower(pc.utf8_trim_whitespace(raw_hashes))
    label_column = "tags" if exported else "label"
    keep = pa.array(np.ones(len(table), dtype=bool))
    if exported and "category" in columns:
        negative = pc.equal(pc.utf8_upper(pc.utf8_trim_whitespace(_strings(table, "category"))), NEGATIVE_CATEGORY)
        keep = pc.invert(negative)
    is_pdq = pc.equal(types, "pdq")
    is_md5 = pc.is_in(types, value_set=pa.array([t for t, k in SIGNAL_TYPES.items() if k == "md5"]))
    lengths = pc.utf8_length(hashes)
    good = pc.and_(pc.or_(pc.and_(is_pdq, pc.equal(lengths, PDQ_HEX_LENGTH)),
                          pc.and_(is_md5, pc.equal(lengths, MD5_HEX_LENGTH))),
                   pc.match_substring_regex(hashes, "^[0-9a-f]*$"))
    bad = np.flatnonzero(pc.and_(keep, pc.invert(good)).to_numpy(zero_copy_only=False))
    if len(bad):
        row = int(bad[0])
        message = _row_error(raw_types[row].as_py(), raw_hashes[row].as_py(), hash_column)
        raise BankError(f"{where} row {row + 1}: {message}")
    labels = pc.utf8_trim_whitespace(table.column(label_column).combine_chunks().cast(pa.string())) \
        if label_column in columns else pa.nulls(len(table), pa.string())
    labels = pc.if_else(pc.equal(pc.fill_null(labels, ""), ""), pa.scalar(None, pa.string()), labels)
    pdq_rows, md5_rows = pc.and_(keep, is_pdq), pc.and_(keep, is_md5)
    pdq_hex = pc.filter(hashes, pdq_rows).to_pylist()
    md5: dict[str, str | None] = {}
    for value, label in zip(pc.filter(hashes, md5_rows).to_pylist(), pc.filter(labels, md5_rows).to_pylist(),
                            strict=True):
        md5.setdefault(value, label)
    skipped = len(table) - int(pc.sum(pc.cast(keep, pa.int64())).as_py() or 0)
    return Bank(name=name, config=config, uri=uri, pdq_hex=pdq_hex, pdq_labels=pc.filter(labels, pdq_rows).to_pylist(),
                pdq_words=hex_to_words(pdq_hex), md5=md5, skipped=skipped)
