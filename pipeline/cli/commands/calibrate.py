"""``cola calibrate``: fit the adversarial-upload detector's centres, scales and threshold on clean images of the
deployment's own model for a target false-positive rate, and write them beside the model (loaded with it).

    cola calibrate --config configs/reference.yaml --dataset fashion-mnist-train --limit 5000 --fpr 0.05 \\
        --output operators/assets/reference-clip/detector-calibration.json

Use images the reported figures do not come from (a training split): a threshold set on the test images it is then
scored on understates the false-positive rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from cola_moderation.operators.backbones.transformers_clip import ClipBackbone
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
from cola_moderation.pipeline.runtime.config import load_config

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML config (model, taxonomy, cola, detector)")
    parser.add_argument("--dataset", required=True,
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


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, calibrate=False)
    if not config.detector.enabled:
        raise ConfigError("detector.enabled is false: there is nothing to calibrate")
    method = args.method or config.method
    output = args.output
    if output is None:
        directory = model_directory(config.model)
        if directory is None:
            raise ConfigError(f"model {config.model.path} has no local directory: pass --output")
        output = directory / CALIBRATION_FILE
    backbone = ClipBackbone.load(config.model)
    dataset = load_dataset(args.dataset, label_names=config.taxonomy.label_names, size=backbone.geometry.size,
                           limit=args.limit, decode=config.decode, offset=args.offset, label_column=args.label_column)
    moderator = Moderator(backbone, taxonomy=config.taxonomy, method=method, cola=config.cola,
                          detector=config.detector)
    values, measured = fit_calibration(moderator, dataset.pixels, fpr=args.fpr, method=method)
    calibration = DetectorCalibration(
        values={k: round(v, 6) if k != "threshold" else v for k, v in values.items()},
        settings=detector_settings(config.detector, method), fpr=args.fpr, measured=measured,
        data={"dataset": dataset.name, "slice": dataset.slice_name, "images": len(dataset),
              "model": config.model.path, "dtype": config.model.dtype, "config": str(args.config)})
    calibration.write(output)
    print(json.dumps(calibration.to_json()["values"]))
    print(f"calibration: {output} ({len(dataset)} clean images of {dataset.name} {dataset.slice_name}, "
          f"{100 * measured['flagged']:.2f}% flagged at target {100 * args.fpr:.1f}%)", file=sys.stderr)
    return 0
