"""``cola hash [--config C] [--bank-rows] [--label L] IMAGE...``: the MD5 and PDQ of each image, as a hash bank needs
them.

Images are decoded exactly as the pipeline decodes them under ``--config`` (same orientation, mode conversion and
early size reduction), so a bank built here matches what ``cola batch`` / ``cola stream`` / ``cola serve`` compute.
Default: one JSON line per image (``path, md5, pdq, pdq_quality``); ``--bank-rows``: a CSV bank
(``signal_type,hash,label``, two rows per image) to write to a file and name in ``matching.banks``. Unreadable or
undecodable images get an error line (JSON) or a message on stderr (CSV); the others go on, exit 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from cola_moderation.operators.backbones.registry import load_geometry
from cola_moderation.operators.decode import open_image
from cola_moderation.operators.errors import DecodeError
from cola_moderation.operators.matching.signals import Hasher, ImageHashes
from cola_moderation.pipeline.runtime.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="reference",
                        help="pipeline config whose decoding to reproduce (default: the bundled reference)")
    parser.add_argument("--bank-rows", action="store_true",
                        help="print a CSV hash bank (signal_type,hash,label) instead of JSON lines")
    parser.add_argument("--label", default=None, help="with --bank-rows: the label column of every row")
    parser.add_argument("--no-header", action="store_true", help="with --bank-rows: omit the CSV header")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")


def hash_bytes(data: bytes, *, size: int, config: Any, hasher: Hasher) -> ImageHashes:
    """The signals of one encoded image, decoded as the pipeline decodes it at model input ``size``."""
    return hasher(data, open_image(data, size=size, config=config))


def bank_rows(hashes: ImageHashes, label: str | None) -> list[list[str]]:
    rows = [["md5", hashes.md5, label or ""]]
    if hashes.pdq is not None:
        rows.insert(0, ["pdq", hashes.pdq, label or ""])
    return rows


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, calibrate=False)
    size = load_geometry(config.model).size
    hasher = Hasher()
    writer = csv.writer(sys.stdout, lineterminator="\n") if args.bank_rows else None
    if writer is not None and not args.no_header:
        writer.writerow(["signal_type", "hash", "label"])
    failed = False
    for path in args.images:
        try:
            hashes = hash_bytes(Path(path).read_bytes(), size=size, config=config.decode, hasher=hasher)
        except (OSError, DecodeError) as exc:
            failed = True
            message = f"cannot read {path}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
            if writer is None:
                print(json.dumps({"path": path, "error": message}), flush=True)
            else:
                print(f"cola hash: {path}: {message}", file=sys.stderr)
            continue
        if writer is None:
            print(json.dumps({"path": path, "md5": hashes.md5, "pdq": hashes.pdq, "pdq_quality": hashes.pdq_quality}),
                  flush=True)
        else:
            writer.writerows(bank_rows(hashes, args.label))
    sys.stdout.flush()
    return 1 if failed else 0
