"""Does the noise probe survive an attacker who knows it? PGD on plain CLIP's cross-entropy minus lambda times the
probe's log noise shift, so the attack also tries to look stable under the probe's noise.

    ./dev bench detector_adaptive [--images 300] [--eps 8/255] [--steps 10,50] [--lambdas 0,0.1,0.25,0.5]

For each (steps, lambda): plain CLIP's and the reference config's (cascade + noise probe) accuracy on the attacked
images, the share the detector flags (and of the clean images), the detector's AUROC clean vs attacked (below 0.5:
the attacked images look *more* stable than clean ones), and where the attacked images' log noise shift falls
against the clean ones' low quantiles (what a two-sided "falsely stable" test could catch). Lambda 0 is the
gray-box attack of ``cola eval --attack pgd``. First ``--images`` Fashion-MNIST test images, seeded.
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from pathlib import Path

import _common  # noqa: F401  (sets the offline environment)
import torch
import torch.nn.functional as F

from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.moderator import Moderator
from cola_moderation.pipeline.cli.demo import DEFAULT_CONFIG
from cola_moderation.pipeline.research.attacks import pgd_linf
from cola_moderation.pipeline.research.evaluation.metrics import auroc
from cola_moderation.pipeline.research.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from cola_moderation.pipeline.runtime.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--eps", type=Fraction, default=Fraction(8, 255))
    parser.add_argument("--steps", default="10,50")
    parser.add_argument("--lambdas", default="0,0.1,0.25,0.5")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    if not config.detector.noise_probe:
        raise SystemExit(f"{args.config}: detector.noise_probe is off; this benchmark attacks the noise probe")
    backbone = load_backbone(config.model.model_copy(update={"device": "cpu"}))
    moderator = Moderator(backbone, taxonomy=config.taxonomy, method=config.method, cola=config.cola,
                          detector=config.detector)
    data = load_fashion_mnist("test")
    count = min(args.images, len(data))
    pixels = data.pixels(slice(0, count))
    if pixels.shape[-1] != backbone.geometry.size:
        pixels = F.interpolate(pixels, size=backbone.geometry.size, mode="bilinear", align_corners=False).clamp(0, 1)
    order = torch.tensor([config.taxonomy.label_names.index(name.replace("-", "_")) for name in CLASS_NAMES])
    labels = order[data.labels[:count]]

    def log_noise_shift(x: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        return moderator.noise_shift(x, grad=grad).clamp_min(1e-12).log()

    with torch.inference_mode():
        clean = moderator.verdict(pixels)
        clean_shift = log_noise_shift(pixels)
    low = {q: float(torch.quantile(clean_shift, q)) for q in (0.01, 0.025)}
    print(f"{args.config.name}: {count} images, eps {args.eps}, clean accuracy "
          f"{float((clean.scores.predicted == labels).float().mean()):.3f}, clean flagged "
          f"{float(clean.suspected.float().mean()):.3f}, clean log noise shift median {float(clean_shift.median()):.2f}"
          f" (1% {low[0.01]:.2f}, 2.5% {low[0.025]:.2f})")
    print("| steps | lambda | plain CLIP acc | cascade acc | flagged | AUROC | below clean 1% / 2.5% | s |")
    print("|---|---|---|---|---|---|---|---|")
    for steps in (int(s) for s in args.steps.split(",")):
        for lam in (float(v) for v in args.lambdas.split(",")):
            def loss(x: torch.Tensor, y: torch.Tensor, lam: float = lam) -> torch.Tensor:
                logits = moderator.zero_shot.logits(backbone.encode_images(x, grad=True))
                evade = log_noise_shift(x, grad=True) if lam else torch.zeros(len(x))
                return F.cross_entropy(logits, y, reduction="none") - lam * evade

            started = time.perf_counter()
            adversarial = pgd_linf(loss, pixels, labels, eps=float(args.eps), steps=steps,
                                   generator=torch.Generator().manual_seed(0))
            adversarial = (adversarial * 255).round() / 255  # an upload is 8-bit
            with torch.inference_mode():
                attacked = moderator.verdict(adversarial)
                plain = moderator.verdict(adversarial, method="clip")
                shift = log_noise_shift(adversarial)
            print(f"| {steps} | {lam:g} | {float((plain.scores.predicted == labels).float().mean()):.3f} | "
                  f"{float((attacked.scores.predicted == labels).float().mean()):.3f} | "
                  f"{float(attacked.suspected.float().mean()):.3f} | "
                  f"{auroc(clean.adversarial_scores, attacked.adversarial_scores):.3f} | "
                  f"{float((shift < low[0.01]).float().mean()):.3f} / {float((shift < low[0.025]).float().mean()):.3f}"
                  f" | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
