"""Plain zero-shot CLIP's worst case per image over APGD-CE-100, APGD-DLR-100 (torchattacks) and PGD-50 with the
cross-entropy and the CW margin loss (the harness's ``pgd_linf``), on Fashion-MNIST, with 95% Wilson intervals.

    python benchmarks/robust_worst_case.py --config configs/reference-robust.yaml --split test --images 1000 \\
        --eps 4/255,8/255 --threads 1 --report worst.json

Adversarial images are rounded to 8 bits before scoring. An image counts as robust at an eps only if it is
classified correctly clean and under every attack. The attacks run in sequence on the images still standing
(AutoAttack's protocol: the worst case is the same, it costs less), so the per-attack rows say how many MORE images
each attack broke. ``--split validation`` scores the held-out training
slice of ``cola finetune`` (seed 0, 5%), the only Fashion-MNIST images to use for choosing between models; the test
split is for final figures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torchattacks

from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier
from cola_moderation.pipeline.research.attacks import clip_cross_entropy, clip_cw_margin, pgd_linf
from cola_moderation.pipeline.research.evaluation.datasets import label_indices
from cola_moderation.pipeline.research.evaluation.harness import eps_label, parse_eps
from cola_moderation.pipeline.research.evaluation.wrapped import ZeroShotLogits
from cola_moderation.pipeline.research.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from cola_moderation.pipeline.runtime.config import load_config


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if total == 0:
        return (math.nan, math.nan)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (centre - half, centre + half)


def load_images(split: str, start: int, count: int, label_names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    if split == "validation":
        train = load_fashion_mnist("train")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        held_out = order[: round(0.05 * len(train))].sort().values
        indices = held_out[start : start + count]
        pixels, raw = train.pixels(indices), train.labels[indices]
    else:
        data = load_fashion_mnist(split)  # type: ignore[arg-type]
        pixels, raw = data.pixels(slice(start, start + count)), data.labels[start : start + count]
    labels = label_indices([CLASS_NAMES[int(i)] for i in raw], label_names, source=f"fashion-mnist:{split}")
    return pixels, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/reference.yaml")
    parser.add_argument("--model", default=None, help="override model.path")
    parser.add_argument("--split", choices=("test", "validation", "train"), default="test")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--eps", default="4/255,8/255")
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--pgd-steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    model_config = config.model if args.model is None else config.model.model_copy(update={"path": args.model})
    backbone = load_backbone(model_config)
    classifier = ZeroShotClassifier(TextBank.build(backbone, config.taxonomy), logit_scale=backbone.logit_scale,
                                    logit_bias=backbone.logit_bias)
    model = ZeroShotLogits(backbone, classifier).eval()
    pixels, labels = load_images(args.split, args.start, args.images, config.taxonomy.label_names)
    n = len(labels)

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model(x[i : i + args.batch]).argmax(-1).cpu() for i in range(0, len(x), args.batch)])

    clean = predict(pixels) == labels
    report: dict[str, object] = {
        "model": model_config.path, "config": args.config, "split": args.split,
        "images": f"{args.split}[{args.start}:{args.start + n}]" + (" of the seed-0 5% validation slice"
                                                                  if args.split == "validation" else ""),
        "n": n, "clean": {"correct": int(clean.sum()), "accuracy": float(clean.float().mean()),
                          "ci95": wilson(int(clean.sum()), n)}, "eps": {}}
    print(f"{model_config.path} on {report['images']}: clean {100 * clean.float().mean():.2f}% "
          f"(95% CI {100 * wilson(int(clean.sum()), n)[0]:.1f}-{100 * wilson(int(clean.sum()), n)[1]:.1f})",
          flush=True)
    for eps_fraction in parse_eps(args.eps):
        eps = float(eps_fraction)
        standing = clean.clone()
        broken: dict[str, int] = {}
        attacks = {
            f"apgd-ce-{args.apgd_steps}": lambda x, y, eps=eps: torchattacks.APGD(
                model, norm="Linf", eps=eps, steps=args.apgd_steps, loss="ce", seed=0)(x, y),
            f"apgd-dlr-{args.apgd_steps}": lambda x, y, eps=eps: torchattacks.APGD(
                model, norm="Linf", eps=eps, steps=args.apgd_steps, loss="dlr", seed=0)(x, y),
            f"pgd-{args.pgd_steps}-ce": lambda x, y, eps=eps: pgd_linf(
                clip_cross_entropy(backbone, classifier), x, y, eps=eps, steps=args.pgd_steps,
                generator=torch.Generator().manual_seed(0)),
            f"pgd-{args.pgd_steps}-cw": lambda x, y, eps=eps: pgd_linf(
                clip_cw_margin(backbone, classifier), x, y, eps=eps, steps=args.pgd_steps,
                generator=torch.Generator().manual_seed(1)),
        }
        tick = time.perf_counter()
        for name, attack in attacks.items():
            index = torch.nonzero(standing).flatten()
            before = int(standing.sum())
            for i in range(0, len(index), args.batch):
                chunk = index[i : i + args.batch]
                # rounded to 8 bits (what an upload can carry); the clean pixels are on the 8-bit grid, so the
                # rounded image stays in the eps ball
                adversarial = attack(pixels[chunk], labels[chunk]).mul(255).round().div(255)
                delta = (adversarial - pixels[chunk]).abs().max().item()
                if delta > eps + 1e-6:
                    raise RuntimeError(f"{name} left the eps ball: {delta} > {eps}")
                standing[chunk] = predict(adversarial) == labels[chunk]
            broken[name] = before - int(standing.sum())
            print(f"  {eps_label(eps_fraction)} {name}: {int(standing.sum())} still correct "
                  f"({broken[name]} broken), {time.perf_counter() - tick:.0f} s", flush=True)
        correct = int(standing.sum())
        low, high = wilson(correct, n)
        report["eps"][eps_label(eps_fraction)] = {  # type: ignore[index]
            "worst_case_accuracy": correct / n, "correct": correct, "ci95": (low, high), "broken_by": broken,
            "seconds": round(time.perf_counter() - tick, 1)}
        print(f"{eps_label(eps_fraction)}: worst case {100 * correct / n:.2f}% (95% CI {100 * low:.1f}-"
              f"{100 * high:.1f}), n={n}", flush=True)
    if args.report:
        args.report.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
