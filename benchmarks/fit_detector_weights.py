"""Fit the detector's signal weights on TRAINING images (data hygiene: nothing tuned on reported test images).

    ./dev bench fit_detector_weights [--config configs/reference.yaml] [--offset 5000] [--images 600]

The detector's post-COLA score is ``sigmoid(bias + w_noise * |z_noise| + w_view * z_view + w_dis * disagreement +
w_drop * confidence_drop)`` (operators/detector/score.py), with the centres and scales of the model's calibration file.
This script computes those four signals for clean Fashion-MNIST TRAINING images ``[offset:offset+images]`` (the
calibration file uses [0:5000], so the default slice is disjoint from it) and for their 10-step L-inf PGD copies on
plain CLIP at each ``--eps`` (gray-box, 8-bit rounded), fits a class-balanced, lightly L2-regularised logistic
regression (clean vs attacked), and prints the weights next to the config's. Only the ratios matter for
deployment: ``cola calibrate`` sets the threshold (and so absorbs the bias) for the target false-positive rate, so
the fitted weights are also shown rescaled to the config's noise-shift weight.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _common  # noqa: F401  (sets the offline environment)
import torch
import torch.nn.functional as F
from _training_slice import graybox_pgd, training_slice

from cola_moderation.operators.moderator import Moderator
from cola_moderation.pipeline.research.evaluation.harness import parse_eps
from cola_moderation.pipeline.research.evaluation.metrics import auroc
from cola_moderation.pipeline.runtime.config import PipelineConfig, load_config
from cola_moderation.pipeline.runtime.library import build_moderator
from cola_moderation.resources import config_path

SIGNALS = ("noise_shift", "view_shift", "disagreement", "confidence_drop")


def signals(moderator: Moderator, pixels: torch.Tensor, *, batch: int = 200) -> torch.Tensor:
    """``[N, 4]`` the unweighted, standardised terms of the detector's post-COLA logit, in ``SIGNALS`` order (the
    detector's own :meth:`AdversarialDetector.terms`, so the fit regresses on exactly what the deployment weighs)."""
    rows = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch):
            x = pixels[start:start + batch]
            screen = moderator.prescreen(x, method="cascade")
            cola = moderator.cola.score_pixels(moderator.backbone, x, known=screen.known)
            assert screen.noise_shift is not None
            probs = moderator.zero_shot.scores_of_logits(screen.logits).probs
            terms = moderator.detector.terms(screen.residual, probs, view_shift=cola.view_shift,
                                             noise_shift=screen.noise_shift, cola_probs=cola.scores.probs)
            rows.append(torch.stack([terms[name] for name in SIGNALS], dim=1).float())
    return torch.cat(rows)


def fit_logistic(features: torch.Tensor, targets: torch.Tensor, *, l2: float = 1e-3) -> tuple[torch.Tensor, float]:
    """Class-balanced L2-regularised logistic regression by L-BFGS: (weights ``[F]``, bias)."""
    weights = torch.zeros(features.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    positive = targets.mean()
    sample_weight = torch.where(targets > 0, 0.5 / positive, 0.5 / (1 - positive))
    optimiser = torch.optim.LBFGS([weights, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = features @ weights + bias
        loss = (F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * sample_weight).mean()
        loss = loss + l2 * weights.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return weights.detach(), float(bias.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=config_path("reference"))
    parser.add_argument("--offset", type=int, default=5000, help="first TRAINING image (default %(default)s)")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--eps", default="4/255,8/255")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    config = load_config(args.config)
    if not (config.detector.enabled and config.detector.noise_probe):
        raise SystemExit(f"{args.config}: the detector with its noise probe must be on")
    moderator = build_moderator(config)
    rows, pixels, labels = training_slice(moderator, config, args.offset, args.images)

    features = [signals(moderator, pixels)]
    targets = [torch.zeros(len(pixels))]
    per_eps: dict[str, float] = {}
    current = torch.tensor(config_weights(config))
    clean_logit = features[0] @ current
    for label, eps in zip(args.eps.split(","), parse_eps(args.eps), strict=True):
        adversarial = graybox_pgd(moderator, pixels, labels, eps=float(eps), steps=args.steps)
        attacked = signals(moderator, adversarial)
        per_eps[label] = auroc(clean_logit, attacked @ current)
        features.append(attacked)
        targets.append(torch.ones(len(pixels)))
    x, y = torch.cat(features), torch.cat(targets)
    weights, bias = fit_logistic(x, y)
    scale = current[0] / weights[0] if weights[0] > 0 else torch.tensor(float("nan"))
    fitted_auroc = auroc((x @ weights)[y == 0], (x @ weights)[y == 1])
    config_auroc = auroc((x @ current)[y == 0], (x @ current)[y == 1])
    print(f"{args.config}: fashion-mnist train [{rows.start}:{rows.stop}], clean vs PGD-{args.steps} at {args.eps} "
          f"on plain CLIP ({time.perf_counter() - started:.0f} s)")
    print("| signal | config weight | fitted weight | fitted, rescaled to the config's noise weight |")
    print("|---|---|---|---|")
    for name, now, fitted in zip(SIGNALS, current.tolist(), weights.tolist(), strict=True):
        print(f"| {name} | {now:.3f} | {fitted:.3f} | {fitted * float(scale):.3f} |")
    print(f"AUROC clean vs attacked (all eps, fitting images): config weights {config_auroc:.4f}, fitted "
          f"{fitted_auroc:.4f}; config weights per eps: " + ", ".join(f"{k} {v:.4f}" for k, v in per_eps.items()))
    if args.report:
        args.report.write_text(json.dumps({
            "config": str(args.config), "images": f"fashion-mnist:train [{rows.start}:{rows.stop}]",
            "attack": f"pgd-{args.steps} ce on plain CLIP, 8-bit rounded", "eps": args.eps.split(","),
            "signals": SIGNALS, "config_weights": current.tolist(), "fitted_weights": weights.tolist(),
            "fitted_bias": bias, "rescaled_weights": (weights * scale).tolist(),
            "auroc": {"config": config_auroc, "fitted": fitted_auroc, "config_per_eps": per_eps}}, indent=1) + "\n")


def config_weights(config: PipelineConfig) -> list[float]:
    detector = config.detector
    return [detector.noise_shift_weight, detector.view_shift_weight, detector.disagreement_weight,
            detector.confidence_drop_weight]


if __name__ == "__main__":
    main()
