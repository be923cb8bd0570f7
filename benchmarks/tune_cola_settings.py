"""Choose COLA's view settings and the cascade margin on TRAINING images (data hygiene: nothing tuned on test images).

    ./dev bench tune_cola_settings [--config configs/reference.yaml] [--offset 6000] [--images 1000]

Gray-box protocol of the COLA paper: 10-step L-inf PGD crafted on plain zero-shot CLIP at each ``--eps`` (seeded, 8-bit
rounded), computed once; the same clean and attacked images are then scored by COLA under every view setting of the
grid (``--counts`` x ``--crop-mins`` x flips on/off, crop scale ``[min, 1]``) and by the cascade (the config's
detector and calibration) under every ``--margins`` value. Fashion-MNIST **training** images
``[offset:offset+images]``: the detector calibration uses [0:5000] and the detector-weight fit [5000:5600], so the
default slice is disjoint from both.

Selection rules, fixed before the 1,000-image run (the fallback in the first came from a 100-image smoke run on
the same training slice, where no setting qualified):

* views: among settings whose COLA clean accuracy is within 1 point of plain CLIP's (if none is, within 1 point of
  the best COLA clean accuracy), the highest mean of the attacked accuracies; settings within 0.5 points of that
  best are tied, and the tie goes to the fewest views (cost grows with N), then to the config's own setting;
* margin: the highest mean of the cascade's clean and attacked accuracies; margins within 0.3 points of that best
  are tied, and the tie goes to the one sending the fewest clean images to COLA (cost).

The gray-box attack does not know COLA: these settings are chosen for the paper's threat model, and the adaptive
suite (`cola eval --attack adaptive`) then measures them against an attacker who does.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (sets the offline environment)
import torch
from _training_slice import graybox_pgd, training_slice

from cola_moderation.operators.config import ColaConfig
from cola_moderation.operators.defences.cola.scorer import ColaScorer
from cola_moderation.operators.moderator import Moderator
from cola_moderation.pipeline.research.evaluation.harness import parse_eps
from cola_moderation.pipeline.runtime.config import load_config
from cola_moderation.pipeline.runtime.library import build_moderator
from cola_moderation.resources import config_path


def floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",")]


def view_variant(base: ColaConfig, count: int, crop_min: float, flips: bool) -> ColaConfig:
    views = base.views.model_copy(update={"count": count, "crop_scale": (crop_min, 1.0),
                                          "flip_probability": 1.0 if flips else 0.0})
    return base.model_copy(update={"views": views})


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return 100 * float((predicted == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=config_path("reference"))
    parser.add_argument("--offset", type=int, default=6000, help="first TRAINING image (default %(default)s)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--eps", default="4/255,8/255")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--counts", default="3,5,8")
    parser.add_argument("--crop-mins", default="0.6,0.75,0.9")
    parser.add_argument("--margins", default="0,0.05,0.1,0.2,0.3")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    config = load_config(args.config)
    moderator = build_moderator(config)
    backbone, bank = moderator.backbone, moderator.bank
    rows, pixels, labels = training_slice(moderator, config, args.offset, args.images)
    sets = {"clean": pixels}
    for label, eps in zip(args.eps.split(","), parse_eps(args.eps), strict=True):
        sets[label] = graybox_pgd(moderator, pixels, labels, eps=float(eps), steps=args.steps, batch=args.batch)

    def predict(score: Any) -> dict[str, float]:
        with torch.inference_mode():
            return {name: accuracy(torch.cat([score(x[i:i + args.batch]) for i in range(0, len(x), args.batch)]),
                    labels) for name, x in sets.items()}

    plain = predict(lambda x: moderator.verdict(x, method="clip").scores.predicted)
    current = config.cola.views
    views: list[dict[str, Any]] = []
    for count, crop_min, flips in itertools.product([int(c) for c in floats(args.counts)], floats(args.crop_mins),
                                                    (True, False)):
        scorer = ColaScorer(bank, view_variant(config.cola, count, crop_min, flips), logit_scale=backbone.logit_scale)
        views.append({"count": count, "crop_min": crop_min, "flips": flips,
                      "accuracy": predict(lambda x, s=scorer: s.score_pixels(backbone, x).predicted)})
    attacked_names = [name for name in sets if name != "clean"]

    def robust(row: dict[str, Any]) -> float:
        return sum(row["accuracy"][name] for name in attacked_names) / len(attacked_names)

    eligible = [row for row in views if row["accuracy"]["clean"] >= plain["clean"] - 1.0]
    if not eligible:  # no setting keeps plain CLIP's clean accuracy: the best clean ones are the candidates
        print("no view setting within 1 point of plain CLIP's clean accuracy; candidates: within 1 point of the "
              "best COLA clean accuracy")
        top = max(row["accuracy"]["clean"] for row in views)
        eligible = [row for row in views if row["accuracy"]["clean"] >= top - 1.0]
    best = max(robust(row) for row in eligible)
    is_current = lambda row: (row["count"], row["crop_min"], row["flips"]) == (  # noqa: E731
        current.count, current.crop_scale[0], current.flip_probability > 0)
    chosen_view = min((row for row in eligible if robust(row) >= best - 0.5),
                      key=lambda row: (row["count"], not is_current(row)))

    margins: list[dict[str, Any]] = []
    for margin in floats(args.margins):
        cascade = Moderator(backbone, taxonomy=config.taxonomy, method="cascade",
                            cola=config.cola.model_copy(update={"cascade_margin": margin}),
                            detector=config.detector, bank=bank)
        row: dict[str, Any] = {"margin": margin,
                               "accuracy": predict(lambda x, c=cascade: c.verdict(x).scores.predicted)}
        with torch.inference_mode():
            sent = torch.cat([cascade.verdict(pixels[i:i + args.batch]).cola_applied.float()
                              for i in range(0, len(pixels), args.batch)])
        row["clean_sent_to_cola"] = 100 * float(sent.mean())
        margins.append(row)

    def overall(row: dict[str, Any]) -> float:
        return sum(row["accuracy"].values()) / len(row["accuracy"])

    best_margin = max(overall(row) for row in margins)
    chosen_margin = min((row for row in margins if overall(row) >= best_margin - 0.3),
                        key=lambda row: row["clean_sent_to_cola"])

    names = list(sets)
    print(f"{args.config}: fashion-mnist train [{rows.start}:{rows.stop}], PGD-{args.steps} on plain CLIP at "
          f"{args.eps}, 8-bit rounded ({time.perf_counter() - started:.0f} s)")
    print("plain CLIP: " + ", ".join(f"{name} {value:.1f}" for name, value in plain.items()))
    print("| views | crop scale | flips | " + " | ".join(names) + " | mean attacked |")
    print("|---|---|---|" + "---|" * (len(names) + 1))
    for row in views:
        mark = " (chosen)" if row is chosen_view else ""
        print(f"| {row['count']}{mark} | [{row['crop_min']}, 1] | {'yes' if row['flips'] else 'no'} | "
              + " | ".join(f"{row['accuracy'][name]:.1f}" for name in names) + f" | {robust(row):.1f} |")
    print("| cascade margin | " + " | ".join(names) + " | mean | clean sent to COLA % |")
    print("|---|" + "---|" * (len(names) + 2))
    for row in margins:
        mark = " (chosen)" if row is chosen_margin else ""
        print(f"| {row['margin']}{mark} | " + " | ".join(f"{row['accuracy'][name]:.1f}" for name in names)
              + f" | {overall(row):.1f} | {row['clean_sent_to_cola']:.1f} |")
    if args.report:
        args.report.write_text(json.dumps({
            "config": str(args.config), "images": f"fashion-mnist:train [{rows.start}:{rows.stop}]",
            "attack": f"pgd-{args.steps} ce on plain CLIP (gray-box), 8-bit rounded", "eps": attacked_names,
            "plain_clip": plain, "views": views, "margins": margins,
            "chosen": {"views": {key: chosen_view[key] for key in ("count", "crop_min", "flips")},
                       "cascade_margin": chosen_margin["margin"]},
            "seconds": round(time.perf_counter() - started, 1)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
