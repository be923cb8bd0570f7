"""Few-shot labels on the reference model: one Fashion-MNIST class renamed to a meaningless word (so its text says
nothing), defined by 5 / 10 / 20 example images from the TRAINING split, scored on held-out TEST images: precision
and recall of that label (95% Wilson intervals), clean and under 10-step L-inf PGD at 4/255 crafted against the
deployed plain-CLIP classifier (few-shot label included; gray-box for COLA / the cascade).

    python benchmarks/fewshot_labels.py [--class bag] [--word vorpel] [--test 2000] [--attacked 500] [--draws 3]
        [--methods clip,cascade] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: F401 - offline environment for transformers
from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.config import LabelConfig, TaxonomyConfig
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier
from cola_moderation.operators.moderator import Moderator
from cola_moderation.pipeline.research.attacks import clip_cross_entropy, pgd_linf, round_to_8bit
from cola_moderation.pipeline.research.evaluation.metrics import wilson_interval
from cola_moderation.pipeline.research.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from cola_moderation.pipeline.runtime.config import load_config


def png_files(images: torch.Tensor, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images.numpy()):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


def taxonomy_with(base: TaxonomyConfig, target: int, word: str, examples: str | None, weight: float) -> TaxonomyConfig:
    labels = list(base.labels)
    labels[target] = LabelConfig(name=word, examples=examples, examples_weight=weight)
    return base.model_copy(update={"labels": tuple(labels)})


def precision_recall(predicted: torch.Tensor, truth: torch.Tensor, target: int) -> dict[str, object]:
    positive, actual = predicted == target, truth == target
    hits = int((positive & actual).sum())
    return {"precision": hits / max(1, int(positive.sum())), "precision_ci": wilson_interval(hits, int(positive.sum())),
            "recall": hits / max(1, int(actual.sum())), "recall_ci": wilson_interval(hits, int(actual.sum())),
            "predicted": int(positive.sum()), "actual": int(actual.sum()), "accuracy": float((predicted == truth)
                                                                                          .float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--class", dest="target", default="bag", choices=CLASS_NAMES)
    parser.add_argument("--word", default="vorpel")
    parser.add_argument("--shots", default="5,10,20")
    parser.add_argument("--weights", default="0.5,1.0")
    parser.add_argument("--test", type=int, default=2000, help="held-out test images scored clean")
    parser.add_argument("--attacked", type=int, default=500, help="of those, how many get the PGD copy")
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--draws", type=int, default=3, help="independent draws of the example images")
    parser.add_argument("--methods", default="clip,cascade")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = load_config("reference")
    backbone = load_backbone(config.model.model_copy(update={"device": "cpu"}))
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    target = CLASS_NAMES.index(args.target)
    pixels, truth = test.pixels(slice(0, args.test)), test.labels[: args.test]
    candidates = (train.labels == target).nonzero().squeeze(-1)
    rows: list[dict[str, object]] = []

    def evaluate(taxonomy: TaxonomyConfig, setting: dict[str, object]) -> None:
        for method in args.methods.split(","):
            moderator = Moderator(backbone, taxonomy=taxonomy, method=method, cola=config.cola,
                                  detector=config.detector)
            started = time.perf_counter()
            clean = torch.cat([moderator.verdict(pixels[s : s + 256]).scores.probs.argmax(-1)
                               for s in range(0, len(pixels), 256)])
            n = args.attacked
            classifier = ZeroShotClassifier(moderator.bank, logit_scale=backbone.logit_scale)
            attacked = round_to_8bit(pgd_linf(clip_cross_entropy(backbone, classifier), pixels[:n], truth[:n],
                                              eps=args.eps, steps=10, generator=torch.Generator().manual_seed(1)))
            robust = torch.cat([moderator.verdict(attacked[s : s + 256]).scores.probs.argmax(-1)
                                for s in range(0, n, 256)])
            row = {**setting, "method": method, "clean": precision_recall(clean, truth, target),
                   f"pgd_{round(args.eps * 255)}": precision_recall(robust, truth[:n], target),
                   "clean_n": len(truth), "attacked_n": n, "seconds": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    evaluate(config.taxonomy, {"label": args.target, "shots": 0, "weight": 0.0, "name": "original"})
    evaluate(taxonomy_with(config.taxonomy, target, args.word, None, 0.5),
             {"label": args.word, "shots": 0, "weight": 0.0, "name": "meaningless, text only"})
    with tempfile.TemporaryDirectory() as tmp:
        for shots in (int(s) for s in args.shots.split(",")):
            for draw in range(args.draws):
                chosen = candidates[torch.randperm(len(candidates), generator=torch.Generator().manual_seed(draw))
                                    [:shots]]
                folder = Path(tmp) / f"{shots}-{draw}"
                png_files(train.images[chosen], folder)
                for weight in (float(w) for w in args.weights.split(",")):
                    evaluate(taxonomy_with(config.taxonomy, target, args.word, str(folder), weight),
                             {"label": args.word, "shots": shots, "draw": draw, "weight": weight,
                              "name": "meaningless + examples"})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
