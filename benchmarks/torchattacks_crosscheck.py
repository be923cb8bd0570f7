"""Cross-check the harness's L-inf PGD against torchattacks' PGD on the same wrapped plain-CLIP model.

    ./dev bench torchattacks_crosscheck [--config configs/reference.yaml] [--images 1000]
        [--eps 4/255,8/255] [--steps 10] [--threads 2]

Both attacks use the same eps, step size (2.5 eps / steps, the harness default), steps and a uniform random start;
only the random draws differ. Prints plain CLIP's robust accuracy under each and the difference (goal: within 2
points). torchattacks 3.5.1 imports without torchvision, so it runs in the project's .venv (install it with
``pip install --no-deps torchattacks==3.5.1``).
"""

from __future__ import annotations

import argparse
import time

import torch
import torchattacks

from cola_moderation.operators.attacks import clip_cross_entropy, pgd_linf
from cola_moderation.operators.backbone import ClipBackbone
from cola_moderation.pipeline.config import load_config
from cola_moderation.pipeline.evaluation.datasets import load_fashion_mnist_eval
from cola_moderation.pipeline.evaluation.harness import Harness, eps_label, parse_eps
from cola_moderation.pipeline.evaluation.metrics import accuracy
from cola_moderation.pipeline.evaluation.wrapped import ZeroShotLogits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/reference.yaml")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--eps", default="4/255,8/255")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    backbone = ClipBackbone.load(config.model)
    harness = Harness(backbone, taxonomy=config.taxonomy, cola=config.cola, detector=config.detector)
    data = load_fashion_mnist_eval(label_names=config.taxonomy.label_names, size=backbone.geometry.size,
                                   limit=args.images)
    model = ZeroShotLogits(backbone, harness.moderator.zero_shot)
    loss = clip_cross_entropy(backbone, harness.moderator.zero_shot)
    batches = [(data.pixels[i : i + args.batch], data.labels[i : i + args.batch])
               for i in range(0, len(data), args.batch)]

    def robust(adversarial: list[torch.Tensor]) -> float:
        with torch.inference_mode():
            predicted = torch.cat([harness.moderator.scores(x).predicted.cpu() for x in adversarial])
        return 100 * accuracy(predicted, data.labels)

    print(f"{config.model.path}, {len(data)} Fashion-MNIST test images, plain zero-shot CLIP, L-inf PGD "
          f"{args.steps} steps, step 2.5 eps / steps, random start; clean {robust([x for x, _ in batches]):.2f}%")
    print("| eps | harness pgd_linf | torchattacks.PGD | difference (points) | seconds (harness / torchattacks) |")
    print("|---|---|---|---|---|")
    for eps in parse_eps(args.eps):
        alpha = 2.5 * float(eps) / args.steps
        tick = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        ours = robust([pgd_linf(loss, x, y, eps=float(eps), steps=args.steps, generator=generator)
                       for x, y in batches])
        middle = time.perf_counter()
        torch.manual_seed(0)
        attack = torchattacks.PGD(model, eps=float(eps), alpha=alpha, steps=args.steps, random_start=True)
        theirs = robust([attack(x, y) for x, y in batches])
        end = time.perf_counter()
        print(f"| {eps_label(eps)} | {ours:.2f}% | {theirs:.2f}% | {ours - theirs:+.2f} | "
              f"{middle - tick:.0f} / {end - middle:.0f} |")


if __name__ == "__main__":
    main()
