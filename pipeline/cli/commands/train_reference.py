"""``cola train-reference``: retrain the bundled reference CLIP on Fashion-MNIST and report its zero-shot accuracy.

Needs the Debian package ``dataset-fashion-mnist``. Writes a checkpoint directory loadable by ``model.path: DIR``
(or, copied to ``operators/assets/reference-clip``, by ``builtin:reference``) and prints a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.config import ModelConfig
from cola_moderation.pipeline.research.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from cola_moderation.pipeline.research.reference_training import (
    TrainingRecipe,
    check_held_out,
    evaluate_zero_shot,
    in_memory_backbone,
    save_reference,
    train_reference,
)
from cola_moderation.pipeline.runtime.config import load_config

log = logging.getLogger(__name__)
DEFAULT_CONFIG = "reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainingRecipe()
    parser.add_argument("--output", default="reference-clip",
                        help="checkpoint directory to write (default: %(default)s)")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="config (path or bundled name) whose taxonomy (held-out templates) is used for evaluation "
                             "(default: %(default)s)")
    parser.add_argument("--data", default=str(DEFAULT_ROOT), help="Fashion-MNIST directory (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--device", default=defaults.device, help="auto|cpu|cuda|cuda:N (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--eval-each-epoch", type=int, default=0, metavar="N",
                        help="after each epoch, log zero-shot accuracy on the first N test images and save DIR/epoch-K "
                             "(default: off)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    taxonomy = load_config(args.config).taxonomy
    check_held_out(taxonomy)
    train = load_fashion_mnist("train", root=args.data)
    test = load_fashion_mnist("test", root=args.data)
    recipe = replace(TrainingRecipe(), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     limit=args.limit, device=args.device, threads=args.threads)
    output = Path(args.output)

    def after_epoch(epoch: int, model: Any) -> None:
        if args.eval_each_epoch:
            count = args.eval_each_epoch
            subset = replace(test, images=test.images[:count], labels=test.labels[:count])
            report = evaluate_zero_shot(in_memory_backbone(model), taxonomy, subset)
            log.warning("epoch %d: zero-shot accuracy %.4f on %d test images", epoch, report.accuracy, report.count)
            save_reference(model, output / f"epoch-{epoch}")

    result = train_reference(recipe, train, progress=not args.no_progress, on_epoch_end=after_epoch)
    save_reference(result.model, output)
    started = time.perf_counter()
    backbone = load_backbone(ModelConfig(path=str(output.resolve()), device=args.device))
    report = evaluate_zero_shot(backbone, taxonomy, test)
    summary = {"output": str(output), "accuracy": round(report.accuracy, 4), "test_images": report.count,
               "per_class": {k: round(v, 4) for k, v in report.per_class.items()},
               "train_seconds": round(result.seconds, 1), "eval_seconds": round(time.perf_counter() - started, 1),
               "epochs": recipe.epochs, "steps": result.steps, "seed": recipe.seed,
               "final_loss": round(sum(result.losses[-20:]) / len(result.losses[-20:]), 4)}
    print(json.dumps(summary), flush=True)
    return 0
