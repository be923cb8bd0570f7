"""Cross-check the harness's L-inf PGD and APGD against torchattacks' PGD / APGD on the same wrapped plain-CLIP model.

    ./dev bench torchattacks_crosscheck [--config configs/reference.yaml] [--images 1000]
        [--eps 4/255,8/255] [--attack pgd|apgd-ce|apgd-dlr] [--steps 10] [--threads 2]

PGD: both use the same eps, step size (2.5 eps / steps, the harness default), steps and a uniform random start;
only the random draws differ. APGD: both run Croce & Hein's schedule with ``--steps`` steps and one restart; both
outputs are rounded to 8 bits before scoring, as ``cola eval`` does. Prints plain CLIP's robust accuracy under
each and the difference (goal: within 2 points).
torchattacks 3.5.1 imports without torchvision, so it runs in the project's .venv (install it with
``pip install --no-deps torchattacks==3.5.1``).
"""

from __future__ import annotations

import argparse
import time

import torch
import torchattacks

from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.pipeline.research.attacks import apgd_linf, clip_cross_entropy, pgd_linf, round_to_8bit
from cola_moderation.pipeline.research.evaluation.datasets import load_fashion_mnist_eval
from cola_moderation.pipeline.research.evaluation.harness import Harness, eps_label, parse_eps
from cola_moderation.pipeline.research.evaluation.metrics import accuracy
from cola_moderation.pipeline.research.evaluation.wrapped import ZeroShotLogits
from cola_moderation.pipeline.runtime.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/reference.yaml")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--eps", default="4/255,8/255")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--attack", choices=("pgd", "apgd-ce", "apgd-dlr"), default="pgd")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    backbone = load_backbone(config.model)
    harness = Harness(backbone, taxonomy=config.taxonomy, cola=config.cola, detector=config.detector)
    data = load_fashion_mnist_eval(label_names=config.taxonomy.label_names, size=backbone.geometry.size,
                                   limit=args.images)
    model = ZeroShotLogits(backbone, harness.moderator.zero_shot)
    loss = clip_cross_entropy(backbone, harness.moderator.zero_shot)
    batches = [(data.pixels[i : i + args.batch], data.labels[i : i + args.batch])
               for i in range(0, len(data), args.batch)]

    def robust(adversarial: list[torch.Tensor]) -> float:
        with torch.inference_mode():
            predicted = torch.cat([harness.moderator.scores(round_to_8bit(x)).predicted.cpu() for x in adversarial])
        return 100 * accuracy(predicted, data.labels)

    print(f"{config.model.path}, {len(data)} Fashion-MNIST test images, plain zero-shot CLIP, L-inf {args.attack} "
          f"{args.steps} steps, random start, 8-bit rounding; clean {robust([x for x, _ in batches]):.2f}%")
    ours_name = "pgd_linf" if args.attack == "pgd" else "apgd_linf"
    theirs_name = "PGD" if args.attack == "pgd" else "APGD"
    print(f"| eps | harness {ours_name} | torchattacks.{theirs_name} | difference (points) | seconds (harness / "
          "torchattacks) |")
    print("|---|---|---|---|---|")
    for eps in parse_eps(args.eps):
        alpha = 2.5 * float(eps) / args.steps
        tick = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        if args.attack == "pgd":
            ours = robust([pgd_linf(loss, x, y, eps=float(eps), steps=args.steps, generator=generator)
                           for x, y in batches])
        else:
            ours = robust([apgd_linf(model, x, y, eps=float(eps), loss=args.attack[5:], steps=args.steps,
                                     generator=generator) for x, y in batches])
        middle = time.perf_counter()
        torch.manual_seed(0)
        if args.attack == "pgd":
            attack = torchattacks.PGD(model, eps=float(eps), alpha=alpha, steps=args.steps, random_start=True)
        else:
            attack = torchattacks.APGD(model, norm="Linf", eps=float(eps), steps=args.steps, n_restarts=1, seed=0,
                                       loss=args.attack[5:])
        theirs = robust([attack(x, y) for x, y in batches])
        end = time.perf_counter()
        print(f"| {eps_label(eps)} | {ours:.2f}% | {theirs:.2f}% | {ours - theirs:+.2f} | "
              f"{middle - tick:.0f} / {end - middle:.0f} |")


if __name__ == "__main__":
    main()
