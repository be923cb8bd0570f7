"""``cola finetune``: adversarially fine-tune the image tower of the config's CLIP (TeCoA or FARE).

    cola finetune --config configs/finetune-fashion-mnist.yaml --dataset fashion-mnist --method tecoa \\
        --eps 8/255 --steps 5 --epochs 3 --output robust-clip

Writes a checkpoint directory of the base model's family (transformers CLIP, open_clip or SigLIP) for ``model.path``
(safetensors, tokenizer and text tower unchanged) with a model card, keeps per-epoch checkpoints in
``OUTPUT/checkpoints`` (``--resume`` continues after the last one) and prints one JSON line: the selected epoch and
its validation figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from cola_moderation.operators.backbones.registry import load_backbone, load_geometry
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier
from cola_moderation.pipeline.research.evaluation.harness import parse_eps
from cola_moderation.pipeline.research.finetune import (
    CHECKPOINTS,
    Finetuner,
    FinetuneRecipe,
    FinetuneResult,
    finetune,
    hardware,
    load_training_images,
    percent,
    split_validation,
)
from cola_moderation.pipeline.runtime.config import load_config

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML: model.path is the base model; TeCoA uses its "
                                                        "taxonomy (labels, synonyms, templates) for the text side")
    parser.add_argument("--dataset", required=True,
                        help="fashion-mnist[:DIR] (training split), a Parquet file (image bytes column; labels "
                             "optional for fare), a folder with one sub-folder of images per class, a cola review "
                             "decisions dataset (final labels) or a cola batch output dataset (fare)")
    parser.add_argument("--method", required=True, choices=("tecoa", "fare"))
    parser.add_argument("--eps", required=True, help="L-inf radius of the training attack, e.g. 8/255")
    parser.add_argument("--steps", type=int, required=True, help="PGD steps of the training attack")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--output", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--validation-split", type=float, default=0.05,
                        help="fraction of the training images held out to select the epoch (default %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue after the last checkpoint in OUTPUT")
    parser.add_argument("--stop-after-epoch", type=int, default=None, metavar="K",
                        help="end this run after epoch K (the schedule still spans --epochs; --resume finishes it), "
                             "for jobs cut into time slots; OUTPUT gets the best epoch so far")
    parser.add_argument("--batch-size", type=int, default=128, help="default %(default)s")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW peak learning rate (default %(default)s)")
    parser.add_argument("--clean-weight", type=float, default=0.0,
                        help="tecoa: weight of the clean cross-entropy mixed in (default 0, TeCoA as published)")
    parser.add_argument("--no-augment", action="store_true", help="no random shifts / flips of training images")
    parser.add_argument("--no-labels", action="store_true",
                        help="ignore the dataset's labels (fare fully label-free; validation by embedding distance)")
    parser.add_argument("--image-column", default="image", help="Parquet image column (default %(default)s)")
    parser.add_argument("--label-column", default=None, help="Parquet label column (default: label, else true_label)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="override model.device (auto|cpu|cuda|cuda:N)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = FinetuneRecipe(method=args.method, eps=float(parse_eps(args.eps)[0]), steps=args.steps,
                            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            clean_weight=args.clean_weight, augment=not args.no_augment,
                            validation_split=args.validation_split, seed=args.seed, limit=args.limit)
    config = load_config(args.config)
    model_config = config.model.model_copy(update={"dtype": "fp32", **({"device": args.device} if args.device else {})})
    torch.manual_seed(recipe.seed)
    data = load_training_images(args.dataset, label_names=config.taxonomy.label_names, method=recipe.method,
                                size=load_geometry(model_config).size, use_labels=not args.no_labels,
                                image_column=args.image_column, label_column=args.label_column)
    if recipe.limit is not None:
        data = data.take(torch.arange(min(recipe.limit, len(data))))
    train, validation = split_validation(data, recipe.validation_split, seed=recipe.seed)
    backbone = load_backbone(model_config)
    classifier = None
    if recipe.method == "tecoa" or data.labels is not None:
        classifier = ZeroShotClassifier(TextBank.build(backbone, config.taxonomy), logit_scale=backbone.logit_scale,
                                        logit_bias=backbone.logit_bias)
    finetuner = Finetuner(backbone, classifier, recipe)
    log.warning("%s fine-tuning of %s on %d images (%d held out for validation) on %s", recipe.method,
                config.model.path, len(train), len(validation), backbone.device)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result = finetune(finetuner, train, validation, checkpoints=args.output / CHECKPOINTS, resume=args.resume,
                      stop_after_epoch=args.stop_after_epoch, progress=not args.no_progress)
    backbone.save_with_image_tower(finetuner.tower, args.output)
    command = "cola " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if Path(sys.argv[0]).name in (
        "cola", "cli.py") else None
    (args.output / "README.md").write_text(model_card(
        recipe=recipe, result=result, base=config.model.path, config_path=str(args.config), data_name=data.name,
        labelled=data.labels is not None, device=str(backbone.device), started=started, command=command,
        family=backbone.family))
    best = result.best
    summary = {"output": str(args.output), "method": recipe.method, "eps": round(recipe.eps, 6),
               "steps": recipe.steps, "epochs": recipe.epochs,
               "epochs_done": len(result.history), "selected_epoch": best.epoch,
               "validation_images": result.validation_images, "train_images": result.train_images,
               "validation_clean_accuracy": _round(best.clean_accuracy),
               "validation_robust_accuracy": _round(best.robust_accuracy),
               "validation_adversarial_distance": round(best.adversarial_distance, 5),
               "seconds": round(result.seconds, 1), "images_per_second": round(result.images_per_second, 1),
               "history": [asdict(r) for r in result.history]}
    print(json.dumps(summary), flush=True)
    return 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def model_card(*, recipe: FinetuneRecipe, result: FinetuneResult, base: str, config_path: str, data_name: str,
               labelled: bool, device: str, started: str, command: str | None, family: str = "clip") -> str:
    best = result.best
    attack = (f"PGD-{recipe.steps} on the zero-shot cross-entropy" if labelled else
              f"PGD-{recipe.steps} on FARE's embedding distance")
    loss = ("TeCoA: cross-entropy of the zero-shot logits of PGD images against the frozen class text embeddings of "
            f"the taxonomy in `{config_path}`" if recipe.method == "tecoa" else
            "FARE: ||f(x_adv) - f0(x)||^2 against the frozen original image tower (no labels in the loss)")
    if recipe.method == "tecoa" and recipe.clean_weight:
        loss += f", mixed with {recipe.clean_weight} x the clean cross-entropy"
    rows = "\n".join(f"| {r.epoch} | {r.train_loss:.4f} | {percent(r.clean_accuracy)} | {percent(r.robust_accuracy)} | "
                     f"{r.adversarial_distance:.4f} | {r.seconds:.0f} |" for r in result.history)
    return f"""# Adversarially fine-tuned CLIP ({recipe.method.upper()})

Written by `cola finetune` (cola-moderation). A checkpoint of the base model's own format ({family}): load it with
`model.path: <this directory>`. Only the image tower was trained; the text tower, logit scale, tokenizer and image
preprocessing files are the base model's, unchanged.

## Recipe
- Base model: `{base}`
- Method: {loss}
- Training attack: L-inf PGD, eps {recipe.eps:.6f} ({recipe.eps * 255:.2f}/255), {recipe.steps} steps of
  2.5 eps / steps, uniform random start
- Epochs: {recipe.epochs} in the learning-rate schedule, {len(result.history)} run so far
- Optimiser: batch {recipe.batch_size}; AdamW lr {recipe.lr} ({recipe.warmup_steps} warm-up steps, cosine decay),
  weight decay {recipe.weight_decay}; gradient clipping 1.0; seed {recipe.seed}
- Augmentation: {"random shift <= 2 px + horizontal flip" if recipe.augment else "none"}
- Data: `{data_name}`, {result.train_images} training images; {result.validation_images} more held out of the same
  data for validation ({recipe.validation_split:.0%}, seeded); {"labels used" if labelled else "no labels"}
- Command: `{command or "(called from Python)"}`

## Validation (epoch selection)
Validation images scored clean and under {attack} at the training eps; the epoch with the best
{"robust accuracy" if labelled else "(lowest) adversarial embedding distance"} is the one saved.

| epoch | train loss | clean acc | robust acc | adv. distance | seconds |
|---|---|---|---|---|---|
{rows}

Selected: epoch {best.epoch} (clean {percent(best.clean_accuracy)}, robust {percent(best.robust_accuracy)}).

## Run
- Started {started}; {result.seconds / 60:.1f} min of training and validation in all
  ({result.images_per_second:.1f} training images/s, validation time included)
- Hardware: {hardware()} (device `{device}`)
"""
