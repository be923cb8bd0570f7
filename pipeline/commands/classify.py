"""``cola classify --config C IMAGE...``: one JSON line per image; undecodable images get an error line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from operators.errors import DecodeError
from operators.moderator import Moderator
from pipeline.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML config")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")


def _read(path: str) -> bytes | DecodeError:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        return DecodeError(f"cannot read {path}: {exc.strerror}")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    moderator = Moderator.from_config(model=config.model, taxonomy=config.taxonomy, decode=config.decode)
    failed = False
    try:
        for start in range(0, len(args.images), config.model.batch_size):
            paths = args.images[start : start + config.model.batch_size]
            payloads = [_read(path) for path in paths]
            readable = [i for i, p in enumerate(payloads) if isinstance(p, bytes)]
            verdicts = moderator.moderate([payloads[i] for i in readable])  # type: ignore[misc]
            results: list[object] = list(payloads)
            for i, verdict in zip(readable, verdicts, strict=True):
                results[i] = verdict
            for path, result in zip(paths, results, strict=True):
                if isinstance(result, DecodeError):
                    failed = True
                    line = {"path": path, "error": str(result), "error_class": type(result).__name__}
                else:
                    line = {"path": path, "label": result.label, "score": round(result.score, 6),  # type: ignore[union-attr]
                            "topk": result.topk_records(), "method": result.method}  # type: ignore[union-attr]
                print(json.dumps(line), flush=True)
    finally:
        moderator.close()
    return 1 if failed else 0

