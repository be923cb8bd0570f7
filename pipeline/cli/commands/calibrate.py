"""``cola calibrate``: fit the adversarial-upload detector's centres, scales and threshold on clean images of the
deployment's own model for a target false-positive rate, and write them beside the model (loaded with it).

    cola calibrate --config configs/reference.yaml --dataset fashion-mnist-train --limit 5000 --fpr 0.05 \\
        --output operators/assets/reference-clip/detector-calibration.json

Use images the reported figures do not come from (a training split): a threshold set on the test images it is then
scored on understates the false-positive rate.

With ``--decisions D`` (a ``cola review`` decisions dataset, or ``kafka:`` for ``kafka.decisions_topic``) it sets
per-label policy thresholds instead: for each taxonomy label the lowest score at which reviewed records are at least
``--precision`` correct, printed as a precision / recall table and written (``--output``) as a ``policy.rules``
snippet. Reviewed records are the quarantined ones plus the audit sample, not a random sample of all traffic: the
audit sample is what keeps the estimate honest below the review thresholds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from cola_moderation.operators.backbones.precision import dtype_name
from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.defences.registry import METHODS
from cola_moderation.operators.detector.calibration import (
    CALIBRATION_FILE,
    DetectorCalibration,
    detector_settings,
    model_directory,
)
from cola_moderation.operators.errors import ConfigError
from cola_moderation.operators.moderator import Moderator
from cola_moderation.pipeline.research.calibration_fit import fit_calibration
from cola_moderation.pipeline.research.evaluation.datasets import load_dataset
from cola_moderation.pipeline.runtime.config import PipelineConfig, load_config

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML config (model, taxonomy, cola, detector)")
    parser.add_argument("--dataset", default=None,
                        help="clean images the reports do not use: fashion-mnist-train[:DIR], a Parquet file or an "
                             "image folder (as cola eval)")
    parser.add_argument("--fpr", type=float, default=0.05, help="target clean false-positive rate (default 0.05)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"calibration file (default: MODEL_DIR/{CALIBRATION_FILE}, where it is loaded from)")
    parser.add_argument("--method", choices=METHODS, default=None, help="method whose flags count (default: the "
                                                                        "config's)")
    parser.add_argument("--limit", type=int, default=None, help="use N images (from --offset)")
    parser.add_argument("--offset", type=int, default=0, help="skip the first K images")
    parser.add_argument("--label-column", default=None, help="Parquet label column (labels are not used)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--decisions", default=None,
                        help="per-label policy thresholds from reviewed decision records: a cola review decisions "
                             "dataset, or kafka: (kafka.decisions_topic); --dataset is then not used")
    parser.add_argument("--precision", type=float, default=0.9, help="--decisions: target precision (default 0.9)")
    parser.add_argument("--action", choices=("review", "block"), default="review",
                        help="--decisions: which rule threshold the snippet sets (default review)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, calibrate=False)
    if args.decisions is not None:
        return run_decisions(args, config)
    if args.dataset is None:
        raise ConfigError("cola calibrate needs --dataset (detector calibration) or --decisions (policy thresholds)")
    if not config.detector.enabled:
        raise ConfigError("detector.enabled is false: there is nothing to calibrate")
    method = args.method or config.method
    output = args.output
    if output is None:
        directory = model_directory(config.model)
        if directory is None:
            raise ConfigError(f"model {config.model.path} has no local directory: pass --output")
        output = directory / CALIBRATION_FILE
    backbone = load_backbone(config.model)
    dataset = load_dataset(args.dataset, label_names=config.taxonomy.label_names, size=backbone.geometry.size,
                           limit=args.limit, decode=config.decode, offset=args.offset, label_column=args.label_column)
    moderator = Moderator(backbone, taxonomy=config.taxonomy, method=method, cola=config.cola,
                          detector=config.detector)
    values, measured = fit_calibration(moderator, dataset.pixels, fpr=args.fpr, method=method)
    calibration = DetectorCalibration(
        values={k: round(v, 6) if k != "threshold" else v for k, v in values.items()},
        settings=detector_settings(config.detector, method), fpr=args.fpr, measured=measured,
        data={"dataset": dataset.name, "slice": dataset.slice_name, "images": len(dataset),
              "model": config.model.path, "dtype": dtype_name(backbone.dtype), "config": str(args.config)})
    calibration.write(output)
    print(json.dumps(calibration.to_json()["values"]))
    print(f"calibration: {output} ({len(dataset)} clean images of {dataset.name} {dataset.slice_name}, "
          f"{100 * measured['flagged']:.2f}% flagged at target {100 * args.fpr:.1f}%)", file=sys.stderr)
    return 0


def run_decisions(args: argparse.Namespace, config: PipelineConfig) -> int:
    """``--decisions``: the precision / recall table and the ``policy.rules`` thresholds it implies."""
    from cola_moderation.pipeline.research.reviewed import decision_thresholds, latest_per_id, read_decisions

    if not 0 < args.precision <= 1:
        raise ConfigError(f"--precision {args.precision}: must be in (0, 1]")
    if args.decisions.startswith("kafka:"):
        from cola_moderation.pipeline.jobs.review.decision_log import read_decisions_topic

        rows = [r.to_json() for r in read_decisions_topic(config.kafka)]
    else:
        rows = read_decisions(Path(args.decisions))
    latest = latest_per_id(rows)
    if not latest:
        raise ConfigError(f"--decisions {args.decisions}: no decision records")
    table = decision_thresholds(latest, config.taxonomy.label_names, precision=args.precision)
    print(f"| label | threshold | precision | recall | flagged | positives | reviewed |  "
          f"(target precision {args.precision})")
    print("|---|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row.label} | {_cell(row.threshold)} | {_cell(row.precision)} | {_cell(row.recall)} | "
              f"{row.flagged} | {row.positives} | {row.reviewed} |")
    rules = {row.label: {args.action: row.threshold} for row in table if row.threshold is not None}
    document = {"decisions": args.decisions, "reviewed_ids": len(latest), "target_precision": args.precision,
                "table": [asdict(row) for row in table], "policy": {"rules": rules}}
    if args.output is not None:
        args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"calibrate: {len(rules)} of {len(table)} labels reach precision {args.precision} on {len(latest)} "
          f"reviewed ids{f' -> {args.output}' if args.output else ''}", file=sys.stderr)
    return 0


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
