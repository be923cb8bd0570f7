"""``cola eval``: robust accuracy of plain CLIP, COLA, the cascade and COLA's ablations under L-inf attacks, plus
the adversarial-upload detector's AUROC and TPR at 5% FPR; writes a JSON report (schema in
:mod:`cola_moderation.pipeline.research.evaluation.report`) and optionally a PNG plot.

    cola eval --config configs/reference.yaml --dataset fashion-mnist --attack pgd \\
        --eps 1/255,4/255,8/255 --steps 10 --report eval.json --plot eval.png --limit 2000
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.backbones.precision import dtype_name
from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.config import DetectorConfig
from cola_moderation.operators.detector.score import seed_is_secret
from cola_moderation.operators.moderator import Moderator
from cola_moderation.pipeline.research.attack_registry import EVAL_ATTACKS, SUITE_NAMES
from cola_moderation.pipeline.research.evaluation.datasets import EvalDataset, load_dataset
from cola_moderation.pipeline.research.evaluation.harness import AttackSpec, Harness, parse_eps
from cola_moderation.pipeline.research.evaluation.report import (
    build_report,
    build_suite_report,
    markdown_table,
    plot_accuracy,
    require_plotting,
    suite_markdown,
    write_report,
)
from cola_moderation.pipeline.research.evaluation.suite import SuiteResult, SuiteRunner, SuiteSpec, suite_report
from cola_moderation.pipeline.runtime.config import PipelineConfig, load_config

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML config (model, taxonomy, cola, detector)")
    parser.add_argument("--dataset", required=True,
                        help="fashion-mnist[:DIR], a Parquet file (image bytes + label column) or a folder with one "
                             "sub-folder of images per class")
    parser.add_argument("--attack", choices=tuple(EVAL_ATTACKS), default="pgd",
                        help="none; pgd / cw: gray-box, crafted on plain CLIP; eot-pgd: through COLA with random "
                             "views; apgd-ce / apgd-dlr / adaptive: against every deployed method end to end "
                             "(adaptive = APGD-CE, APGD-DLR, PGD CE and CW, plus the detector-aware attack on the "
                             "cascade), reporting the per-image worst case")
    parser.add_argument("--eps", default="4/255", help="L-inf radius in pixel units, e.g. 4/255; a comma list sweeps")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of pgd / cw / eot-pgd (default 10)")
    parser.add_argument("--apgd-steps", type=int, default=100, help="suite: APGD steps (default 100)")
    parser.add_argument("--pgd-steps", type=int, default=50, help="suite: PGD-CE / PGD-CW steps (default 50)")
    parser.add_argument("--restarts", type=int, default=1, help="suite: APGD random restarts (default 1)")
    parser.add_argument("--detector-aware-steps", type=int, default=100,
                        help="adaptive: steps of the detector-aware attack on the cascade (default 100)")
    parser.add_argument("--attacker-seed", type=int, action="append", default=None,
                        help="adaptive: also run the detector-aware attack with this guess of the probe's noise "
                             "seed (the attacker does not know the deployment's secret seed); repeatable")
    parser.add_argument("--targets", default="clip,cascade,cola",
                        help="suite: deployed methods to attack (default clip,cascade,cola); all are scored")
    parser.add_argument("--independent", action="store_true",
                        help="suite: run every attack on every clean-correct image (exact per-attack figures; "
                             "slower) instead of AutoAttack's sequence over the images not yet broken")
    parser.add_argument("--step-size", default=None, help="PGD step (e.g. 1/255); default 2.5 eps / steps")
    parser.add_argument("--eot-samples", type=int, default=1, help="eot-pgd: fresh view draws averaged per step")
    parser.add_argument("--seed", type=int, default=0, help="random starts and EOT draws (default 0)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate N images only (from --offset)")
    parser.add_argument("--offset", type=int, default=0, help="skip the first K images (the slice is named in the "
                                                               "report)")
    parser.add_argument("--label-column", default=None,
                        help="Parquet column with the labels: class names or integer indices in taxonomy order "
                             "(default: label, else true_label)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per attack batch (default 256; the suite 128)")
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
    if args.plot is not None:
        require_plotting()  # before a run of minutes, not after it
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    backbone = load_backbone(config.model)
    labels = config.taxonomy.label_names
    dataset = load_dataset(args.dataset, label_names=labels, size=backbone.geometry.size, limit=args.limit,
                           decode=config.decode, offset=args.offset, label_column=args.label_column)
    log.info("evaluating %d images of %s %s", len(dataset), dataset.name, dataset.slice_name)
    config_section: dict[str, object] = {
        "path": str(args.config), "method": config.method, "cola": config.cola.model_dump(mode="json"),
        "detector": detector_section(config.detector)}
    model_section: dict[str, object] = {**backbone.describe(), "dtype": dtype_name(backbone.dtype)}
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.attack in SUITE_NAMES:
        return run_suite(args, config, backbone, dataset, config_section, model_section, progress)
    step_size = float(parse_eps(args.step_size)[0]) if args.step_size else None
    spec = AttackSpec(name=args.attack, eps=tuple(parse_eps(args.eps)), steps=args.steps, step_size=step_size,
                      eot_samples=args.eot_samples, seed=args.seed, batch_size=args.batch_size or 256)
    harness = Harness(backbone, taxonomy=config.taxonomy, cola=config.cola, detector=config.detector)
    result = harness.run(dataset, spec, progress=progress)
    report = build_report(result, config=config_section, model=model_section, dataset=dataset.summary(),
                          command=invocation())
    report["data"] = data_usage(config, dataset)
    write_report(report, args.report)
    if args.plot is not None:
        plot_accuracy([report], args.plot)
    print(markdown_table(report))
    print(f"report: {args.report} ({result.total_seconds:.0f} s, {len(dataset)} images)", file=sys.stderr)
    return 0


def detector_section(detector: DetectorConfig) -> dict[str, object]:
    """The detector config for a report, with the probe's noise seed replaced by ``"secret"`` when set."""
    section: dict[str, object] = detector.model_dump(mode="json")
    if seed_is_secret(detector):
        section["noise_seed"] = "secret"
    return section


def data_usage(config: PipelineConfig, dataset: EvalDataset) -> dict[str, object]:
    """Which images were used for what: the reported slice, and where the detector's constants came from."""
    calibration = getattr(config.detector, "calibration_source", None)
    return {"reported": f"{dataset.name} {dataset.slice_name}",
            "detector_calibration": calibration or "none: the config's detector constants (see its comments)"}


def run_suite(args: argparse.Namespace, config: PipelineConfig, backbone: Backbone, dataset: EvalDataset,
              config_section: dict[str, object], model_section: dict[str, object],
              progress: Callable[[str], None]) -> int:
    spec = SuiteSpec(name=args.attack, eps=tuple(parse_eps(args.eps)), apgd_steps=args.apgd_steps,
                     pgd_steps=args.pgd_steps, restarts=args.restarts, detector_aware_steps=args.detector_aware_steps,
                     attacker_seeds=(None, *(args.attacker_seed or ())), independent=args.independent,
                     seed=args.seed, batch_size=args.batch_size or 128,
                     targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()))
    moderator = Moderator(backbone, taxonomy=config.taxonomy, method="cascade", cola=config.cola,
                          detector=config.detector)
    def write(result: SuiteResult) -> dict[str, object]:
        report = build_suite_report(suite_report(result, config.detector), config=config_section,
                                    model=model_section, dataset=dataset.summary(), data=data_usage(config, dataset),
                                    command=invocation())
        write_report(report, args.report)
        return report

    result = SuiteRunner(moderator, spec).run(dataset, progress=progress, finished_eps=write)  # partial after each eps
    report = write(result)
    if args.plot is not None:
        plot_accuracy([report], args.plot)
    print(suite_markdown(report))
    print(f"report: {args.report} ({result.total_seconds:.0f} s, {len(dataset)} images)", file=sys.stderr)
    return 0
