"""Adversarial fine-tuning throughput (training images/s) of ``cola finetune``'s training step, side by side for the
bundled reference model (28 px, 4-layer ViT) and a ViT-B/32-shaped CLIP (224 px, random weights: speed does not
depend on them; built with transformers' CLIPConfig, nothing downloaded), for TeCoA and FARE.

    python benchmarks/finetune_throughput.py [--steps 5] [--batch 128] [--vit-batch 8] [--batches 2] [--threads 1]
        [--device cpu]

One training step = PGD with ``--steps`` forward+backward passes through the image tower, then one forward+backward
for the update (FARE adds one forward of the frozen tower). Images/s x 3,600 = images per hour; divide the dataset
size x epochs by it to size a job. On a GPU (``--device cuda``) the same step runs under autocast (bf16/fp16).
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import vit_b32_dir

from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.config import ModelConfig, TaxonomyConfig
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier
from cola_moderation.pipeline.research.finetune import Finetuner, FinetuneRecipe

LABELS = ("t_shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")


def images_per_second(path: str, method: str, batch: int, args: argparse.Namespace) -> tuple[float, int]:
    backbone = load_backbone(ModelConfig(path=path, device=args.device))
    taxonomy = TaxonomyConfig(labels=LABELS, templates=("a photo of a {}.",))
    classifier = ZeroShotClassifier(TextBank.build(backbone, taxonomy), logit_scale=backbone.logit_scale,
                                    logit_bias=backbone.logit_bias)
    recipe = FinetuneRecipe(method=method, eps=8 / 255, steps=args.steps, epochs=1,  # type: ignore[arg-type]
                            batch_size=batch)
    finetuner = Finetuner(backbone, classifier, recipe)
    size = backbone.geometry.size
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand((batch, 3, size, size), generator=generator).to(backbone.device)
    labels = torch.randint(len(LABELS), (batch,), generator=generator).to(backbone.device)
    finetuner.tower.train()
    finetuner.train_step(pixels, labels, generator, total_steps=1000)  # warm-up
    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.batches):
        finetuner.train_step(pixels, labels, generator, total_steps=1000)
    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
    return batch * args.batches / (time.perf_counter() - started), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="PGD steps of the training attack (default 5)")
    parser.add_argument("--batch", type=int, default=128, help="reference model batch (default: cola finetune's)")
    parser.add_argument("--vit-batch", type=int, default=8, help="ViT-B/32 batch (small: it is slow on CPU)")
    parser.add_argument("--batches", type=int, default=2, help="timed batches per cell (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {"reference (builtin:reference)": ("builtin:reference", args.batch),
              "ViT-B/32-shaped": (str(vit_b32_dir()), args.vit_batch)}
    where = args.device if args.device != "cpu" else f"cpu, {args.threads} thread(s)"
    print(f"fine-tuning throughput, PGD-{args.steps} at 8/255, {where}", flush=True)
    print("| model | input | batch | TeCoA images/s | FARE images/s | hours per 1M images (TeCoA) |")
    print("|---|---|---|---|---|---|", flush=True)
    for name, (path, batch) in models.items():
        tecoa, size = images_per_second(path, "tecoa", batch, args)
        fare, _ = images_per_second(path, "fare", batch, args)
        print(f"| {name} | {size} px | {batch} | {tecoa:.2f} | {fare:.2f} | {1e6 / tecoa / 3600:.1f} |", flush=True)


if __name__ == "__main__":
    main()
