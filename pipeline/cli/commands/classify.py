"""``cola classify --config C [--method clip|cola|cascade] IMAGE...``: one JSON line per image; undecodable images
get an error line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cola_moderation.operators.defences.registry import METHODS
from cola_moderation.operators.errors import DecodeError
from cola_moderation.operators.moderator import Moderation, Moderator
from cola_moderation.operators.policy import Policy
from cola_moderation.pipeline.runtime.config import load_config
from cola_moderation.pipeline.runtime.library import build_moderator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML config")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="override the config's method: plain CLIP, COLA on every image, or the cascade")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")


def result_line(path: str, result: Moderation | DecodeError, policy: Policy | None = None) -> dict[str, Any]:
    """The JSON line of one image; an animated one reports the frame ``policy`` decides on (default: the first)."""
    if isinstance(result, DecodeError):
        return {"path": path, "error": str(result), "error_class": type(result).__name__}
    if policy is not None:
        result = policy.decide_frames(result)[0]
    line = {"path": path, "label": result.label, "score": round(result.score, 6), "topk": result.topk_records(),
            "method": result.method, "adversarial_score": round(result.adversarial_score, 6),
            "suspected_adversarial": result.suspected_adversarial}
    return line if result.frame_count == 1 else {**line, "frame": result.frame, "frame_count": result.frame_count}


def classify_files(moderator: Moderator, paths: list[str], policy: Policy | None = None) -> list[dict[str, Any]]:
    """Classify ``paths``; unreadable or undecodable files give an error line instead of stopping the others.
    ``policy``: picks the deciding frame of animated images."""
    payloads: dict[int, bytes] = {}
    results: dict[int, Moderation | DecodeError] = {}
    for index, path in enumerate(paths):
        try:
            payloads[index] = Path(path).read_bytes()
        except OSError as exc:
            results[index] = DecodeError(f"cannot read {path}: {exc.strerror}")
    verdicts = moderator.moderate(list(payloads.values()))
    results.update(zip(payloads, verdicts, strict=True))
    return [result_line(path, results[index], policy) for index, path in enumerate(paths)]


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    moderator = build_moderator(config, method=args.method)
    failed = False
    try:
        for start in range(0, len(args.images), config.model.batch_size):
            batch = args.images[start : start + config.model.batch_size]
            for line in classify_files(moderator, batch, Policy(config.policy)):
                failed = failed or "error" in line
                print(json.dumps(line), flush=True)
    finally:
        moderator.close()
    return 1 if failed else 0
