"""Robust accuracy of plain CLIP, COLA ablations and the cascade under L-inf PGD, plus the detector's AUROC.

    ./dev bench robustness_sweep [--config configs/reference.yaml] [--images 1000] [--eps 0,1/255,4/255,8/255]
    ./dev bench robustness_sweep --eps 0 --threads 1     # clean accuracy + throughput only, stable timings

Gray-box protocol of the COLA paper: 10-step L-inf PGD (random start, step 2.5 eps / steps) crafted on plain
zero-shot CLIP, then the same adversarial images are scored by every method. Fashion-MNIST test images (the first
``--images``), the config's model and taxonomy (default: the bundled reference model). Rows:

* plain CLIP, and COLA with one stage on (views only, projection only, OT only), full COLA, and the cascade
  without a probe, with the view probe (`detector.probe`) and with the noise probe (`detector.noise_probe`);
* ``--adaptive``: also full COLA under PGD crafted through COLA itself (EOT over fresh views each step).

Columns: accuracy at each eps; the cascade's share of images sent to COLA; the detector's AUROC (clean vs attacked
at that eps) for the full score (CLIP + COLA signals) and the cascade's single-pass pre-screen. Goals (issue 4):
at 4/255 and 8/255 COLA or cascade >= plain + 10 points, clean accuracy within 1 point of plain.
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from _common import interleaved

from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.config import ColaConfig, DetectorConfig
from cola_moderation.operators.defences.cola.scorer import ColaScorer
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.moderator import Moderator
from cola_moderation.pipeline.research.attacks import clip_cross_entropy, cola_cross_entropy, pgd_linf
from cola_moderation.pipeline.research.evaluation.metrics import auroc
from cola_moderation.pipeline.research.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from cola_moderation.pipeline.runtime.config import load_config

REPO = Path(__file__).resolve().parent.parent



def override(config: ColaConfig, assignments: list[str]) -> ColaConfig:
    """Apply ``a.b=value`` (YAML values) to a copy of ``config``."""
    data: dict[str, Any] = config.model_dump()
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    return ColaConfig.model_validate(data)


def ablations(base: ColaConfig) -> dict[str, ColaConfig]:
    def only(stage: str | None) -> ColaConfig:
        update = {name: getattr(base, name).model_copy(update={"enabled": stage in (name, "all")})
                  for name in ("views", "projection", "transport")}
        return base.model_copy(update=update)

    no_projection = only("all").model_copy(update={"projection": base.projection.model_copy(update={"enabled": False})})
    return {"views only": only("views"), "projection only": only("projection"), "OT only": only("transport"),
            "COLA without projection": no_projection, "COLA (full)": only("all")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "reference.yaml"))
    parser.add_argument("--model-path", default=None, help="override model.path (e.g. a checkpoint directory)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--eps", default="0,1/255,4/255,8/255")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="assignments", action="append", default=[],
                        help="override a cola config key, e.g. --set views.crop_scale=[0.8,1.0]")
    parser.add_argument("--adaptive", action="store_true", help="add COLA under EOT-PGD crafted through COLA")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    model_config = config.model if args.model_path is None else config.model.model_copy(
        update={"path": args.model_path})
    cola_config = override(config.cola, args.assignments)
    backbone = load_backbone(model_config)
    size = backbone.geometry.size
    bank = TextBank.build(backbone, config.taxonomy)
    order = torch.tensor([config.taxonomy.label_names.index(name.replace("-", "_")) for name in CLASS_NAMES])
    data = load_fashion_mnist("test")
    count = min(args.images, len(data))
    pixels = data.pixels(slice(0, count))
    if pixels.shape[-1] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = order[data.labels[:count]]
    def detector(probe: bool, noise_probe: bool) -> DetectorConfig:
        """The config's detector with the noise probe; without it, the default weights (fitted for that case)."""
        if noise_probe:
            return config.detector.model_copy(update={"probe": probe})
        return DetectorConfig(threshold=config.detector.threshold, probe=probe)

    plain = Moderator(backbone, taxonomy=config.taxonomy, method="clip", cola=cola_config,
                      detector=detector(False, False), bank=bank)
    cascade = Moderator(backbone, taxonomy=config.taxonomy, method="cascade", cola=cola_config,
                        detector=detector(False, False), bank=bank)
    probed = Moderator(backbone, taxonomy=config.taxonomy, method="cascade", cola=cola_config,
                       detector=detector(True, False), bank=bank)
    noised = Moderator(backbone, taxonomy=config.taxonomy, method="cascade", cola=cola_config,
                       detector=detector(False, True), bank=bank)
    full = Moderator(backbone, taxonomy=config.taxonomy, method="cola", cola=cola_config, detector=config.detector,
                     bank=bank)
    scorers = {name: ColaScorer(bank, variant, logit_scale=backbone.logit_scale)
               for name, variant in ablations(cola_config).items()}
    attack_loss = clip_cross_entropy(backbone, plain.zero_shot)
    epsilons = [Fraction(text) for text in args.eps.split(",")]

    def batches(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(x[i : i + args.batch], labels[i : i + args.batch]) for i in range(0, count, args.batch)]

    rows: dict[str, list[float]] = {}
    extra: dict[str, list[float]] = {"cascade: % sent to COLA": [], "cascade + probe: % sent to COLA": [],
                                     "cascade + noise probe: % sent to COLA": [],
                                     "detector AUROC, full score (method cola)": [],
                                     "detector AUROC, pre-screen": [], "detector AUROC, pre-screen + probe": [],
                                     "detector AUROC, pre-screen + noise probe": [],
                                     "detector AUROC, cascade + noise probe": [],
                                     "% suspected (method cola)": [], "median view shift (method cola)": []}
    clean_scores: dict[str, torch.Tensor] = {}
    started = time.perf_counter()
    for eps in epsilons:
        generator = torch.Generator().manual_seed(args.seed)
        attacked = torch.cat([pgd_linf(attack_loss, x, y, eps=float(eps), steps=args.steps, generator=generator)
                              for x, y in batches(pixels)])
        results: dict[str, list[torch.Tensor]] = {}
        with torch.inference_mode():
            for x, _ in batches(attacked):
                clip_verdict = plain.verdict(x)
                results.setdefault("plain CLIP", []).append(clip_verdict.scores.predicted)
                results.setdefault("prescreen", []).append(clip_verdict.adversarial_scores)
                for name, scorer in scorers.items():
                    results.setdefault(name, []).append(scorer.score_pixels(backbone, x).predicted)
                cascade_verdict = cascade.verdict(x)
                results.setdefault("cascade", []).append(cascade_verdict.scores.predicted)
                results.setdefault("escalated", []).append(cascade_verdict.cola_applied.float())
                probed_verdict = probed.verdict(x)
                results.setdefault("cascade + probe", []).append(probed_verdict.scores.predicted)
                results.setdefault("probe escalated", []).append(probed_verdict.cola_applied.float())
                results.setdefault("probe prescreen", []).append(
                    probed.verdict(x, method="clip").adversarial_scores)
                noised_verdict = noised.verdict(x)
                results.setdefault("cascade + noise probe", []).append(noised_verdict.scores.predicted)
                results.setdefault("noise escalated", []).append(noised_verdict.cola_applied.float())
                results.setdefault("noise cascade", []).append(noised_verdict.adversarial_scores)
                results.setdefault("noise prescreen", []).append(
                    noised.verdict(x, method="clip").adversarial_scores)
                full_verdict = full.verdict(x)
                results.setdefault("full score", []).append(full_verdict.adversarial_scores)
                results.setdefault("suspected", []).append(full_verdict.suspected.float())
                results.setdefault("view shift", []).append(scorers["COLA (full)"].score_pixels(backbone, x).view_shift)
        merged = {name: torch.cat(values) for name, values in results.items()}
        for name in ("plain CLIP", *scorers, "cascade", "cascade + probe", "cascade + noise probe"):
            rows.setdefault(name, []).append(100 * float((merged[name] == labels).float().mean()))
        extra["cascade: % sent to COLA"].append(100 * float(merged["escalated"].mean()))
        extra["cascade + probe: % sent to COLA"].append(100 * float(merged["probe escalated"].mean()))
        extra["cascade + noise probe: % sent to COLA"].append(100 * float(merged["noise escalated"].mean()))
        extra["% suspected (method cola)"].append(100 * float(merged["suspected"].mean()))
        extra["median view shift (method cola)"].append(float(merged["view shift"].median()))
        signals = {"detector AUROC, full score (method cola)": "full score", "detector AUROC, pre-screen": "prescreen",
                   "detector AUROC, pre-screen + probe": "probe prescreen",
                   "detector AUROC, pre-screen + noise probe": "noise prescreen",
                   "detector AUROC, cascade + noise probe": "noise cascade"}
        if eps == 0:
            clean_scores = {key: merged[key] for key in signals.values()}
        for row, key in signals.items():
            # negatives: the clean images; positives: the same images attacked at this eps
            extra[row].append(100 * auroc(clean_scores[key], merged[key]) if clean_scores and eps else float("nan"))
        if args.adaptive:
            scorer = ColaScorer(bank, cola_config, logit_scale=backbone.logit_scale)
            adaptive_loss = cola_cross_entropy(backbone, scorer, eot_seed=args.seed + 1)
            adaptive = torch.cat([pgd_linf(adaptive_loss, x, y, eps=float(eps), steps=args.steps,
                                           generator=torch.Generator().manual_seed(args.seed))
                                  for x, y in batches(pixels)])
            with torch.inference_mode():
                predicted = torch.cat([scorer.score_pixels(backbone, x).predicted for x, _ in batches(adaptive)])
            rows.setdefault("COLA (full), adaptive EOT-PGD", []).append(
                100 * float((predicted == labels).float().mean()))

    header = ["method"] + [("clean" if e == 0 else f"{e * 255}/255") for e in epsilons]
    print(f"model {model_config.path}, {count} Fashion-MNIST test images, PGD L-inf {args.steps} steps crafted on "
          f"plain CLIP (gray-box), N={scorers['COLA (full)'].view_count} views, "
          f"C={scorers['COLA (full)'].subspace.rank}, {time.perf_counter() - started:.0f} s")
    if args.assignments:
        print("cola overrides: " + " ".join(args.assignments))
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, values in {**rows, **extra}.items():
        digits = 3 if name.startswith("median") else 1
        print(f"| {name} | " + " | ".join("-" if v != v else f"{v:.{digits}f}" for v in values) + " |")
    base = rows["plain CLIP"]
    for name in ("COLA (full)", "cascade", "cascade + probe", "cascade + noise probe"):
        gains = [f"{rows[name][i] - base[i]:+.1f}" for i in range(len(epsilons))]
        print(f"{name} minus plain (points): " + ", ".join(gains))

    # throughput on clean images: cascade vs plain CLIP
    clean = pixels[: args.batch]
    times = interleaved({"plain CLIP": lambda: plain.verdict(clean), "cascade": lambda: cascade.verdict(clean),
                         "cascade + probe": lambda: probed.verdict(clean),
                         "cascade + noise probe": lambda: noised.verdict(clean), "COLA": lambda: full.verdict(clean)},
                        repeats=3)
    print(f"clean throughput, batch {len(clean)} (goal: cascade >= 0.8x plain CLIP):")
    for name, seconds in times.items():
        print(f"  {name:16s} {len(clean) / seconds:7.0f} img/s  {times['plain CLIP'] / seconds:.2f}x plain CLIP")


if __name__ == "__main__":
    main()
