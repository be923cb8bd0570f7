"""``cola eval``: robust accuracy of plain CLIP, COLA, the cascade and COLA's ablations under L-inf attacks, plus
the adversarial-upload detector's AUROC and TPR at 5% FPR; writes a JSON report (schema in
:mod:`cola_moderation.pipeline.evaluation.report`) and optionally a PNG plot.

    cola eval --config configs/reference.yaml --dataset fashion-mnist --attack pgd \\
        --eps 1/255,4/255,8/255 --steps 10 --report eval.json --plot eval.png --limit 2000
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from cola_moderation.operators.backbone import ClipBackbone
from cola_moderation.pipeline.config import load_config
from cola_moderation.pipeline.evaluation.datasets import load_dataset
from cola_moderation.pipeline.evaluation.harness import ATTACKS, AttackSpec, Harness, parse_eps
from cola_moderation.pipeline.evaluation.report import build_report, markdown_table, plot_accuracy, write_report

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML config (model, taxonomy, cola, detector)")
    parser.add_argument("--dataset", required=True,
                        help="fashion-mnist[:DIR], a Parquet file (image bytes + label column) or a folder with one "
                             "sub-folder of images per class")
    parser.add_argument("--attack", choices=tuple(ATTACKS), default="pgd",
                        help="none; pgd / cw: gray-box, crafted on plain CLIP; eot-pgd: adaptive, through COLA")
    parser.add_argument("--eps", default="4/255", help="L-inf radius in pixel units, e.g. 4/255; a comma list sweeps")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    parser.add_argument("--step-size", default=None, help="PGD step (e.g. 1/255); default 2.5 eps / steps")
    parser.add_argument("--eot-samples", type=int, default=1, help="eot-pgd: fresh view draws averaged per step")
    parser.add_argument("--seed", type=int, default=0, help="random starts and EOT draws (default 0)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    parser.add_argument("--batch-size", type=int, default=256, help="images per attack batch (default 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--report", required=True, type=Path, help="write the JSON report here")
    parser.add_argument("--plot", type=Path, default=None, help="also write accuracy vs eps as a PNG here")


def invocation() -> list[str] | None:
    """``["cola", "eval", ...]`` when run from the command line (``cola`` or ``python -m
    cola_moderation.pipeline.cli``)."""
    if Path(sys.argv[0]).name in ("cola", "cli.py"):
        return ["cola", *sys.argv[1:]]
    return None


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    step_size = float(parse_eps(args.step_size)[0]) if args.step_size else None
    spec = AttackSpec(name=args.attack, eps=tuple(parse_eps(args.eps)), steps=args.steps, step_size=step_size,
                      eot_samples=args.eot_samples, seed=args.seed, batch_size=args.batch_size)
    config = load_config(args.config)
    backbone = ClipBackbone.load(config.model)
    labels = config.taxonomy.label_names
    dataset = load_dataset(args.dataset, label_names=labels, size=backbone.geometry.size, limit=args.limit,
                           decode=config.decode)
    log.info("evaluating %d images of %s", len(dataset), dataset.name)
    harness = Harness(backbone, taxonomy=config.taxonomy, cola=config.cola, detector=config.detector)
    result = harness.run(dataset, spec, progress=lambda line: print(line, file=sys.stderr, flush=True))
    report = build_report(
        result,
        config={"path": str(args.config), "method": config.method, "cola": config.cola.model_dump(mode="json"),
                "detector": config.detector.model_dump(mode="json")},
        model={"path": config.model.path, "device": str(backbone.device), "dtype": config.model.dtype,
               "image_size": backbone.geometry.size, "embed_dim": backbone.embed_dim,
               "logit_scale": round(backbone.logit_scale, 4)},
        dataset=dataset.summary(), command=invocation())
    write_report(report, args.report)
    if args.plot is not None:
        plot_accuracy([report], args.plot)
    print(markdown_table(report))
    print(f"report: {args.report} ({result.total_seconds:.0f} s, {len(dataset)} images)", file=sys.stderr)
    return 0
