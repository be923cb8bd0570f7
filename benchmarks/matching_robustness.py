"""How robust hash matching is: 500 Fashion-MNIST test images in a PDQ + MD5 bank (hashed as ``cola hash`` does),
then the share of their modified copies that still match (PDQ distance <= 31, quality >= 50): JPEG re-encodes
(q 50-95), resizes (0.5-2x, bicubic), crops (5% of the side removed: 2.5% from each edge, or all from one corner),
L-inf PGD at 8/255 crafted against plain CLIP (reference model, 10 steps, true labels, 8-bit), and the false-match
rate on 10,000 Fashion-MNIST training images not in the bank. 95% Wilson intervals; distance percentiles.
``--upscale 8`` runs the same on the images enlarged to 224 px first (bicubic; the PGD copies are the 28 px ones
enlarged), closer to photo-sized uploads than native 28 px.

    python benchmarks/matching_robustness.py [--banked 500] [--others 10000] [--upscale 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: F401 - offline environment for transformers
from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.decode import open_image
from cola_moderation.operators.matching.banks import Bank
from cola_moderation.operators.matching.config import BankConfig, MatchingConfig
from cola_moderation.operators.matching.matcher import Matcher
from cola_moderation.operators.matching.signals import Hasher, ImageHashes, hex_to_words
from cola_moderation.pipeline.research.evaluation.metrics import wilson_interval
from cola_moderation.pipeline.research.fashion_mnist import load_fashion_mnist
from tests.operators.matching.known_images import pgd_copies

HASHER = Hasher()


def save(image: Image.Image, fmt: str = "PNG", **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def hashes(payload: bytes) -> ImageHashes:
    return HASHER(payload, open_image(payload, size=28, config=DecodeConfig()))


def resized(factor: float) -> Callable[[Image.Image], bytes]:
    def run(image: Image.Image) -> bytes:
        side = max(1, round(image.width * factor))
        return save(image.resize((side, side), Image.Resampling.BICUBIC))
    return run


def cropped(fraction: float, *, centred: bool) -> Callable[[Image.Image], bytes]:
    def run(image: Image.Image) -> bytes:
        cut = round(image.width * fraction)
        left = cut // 2 if centred else cut
        top = cut // 2 if centred else cut
        return save(image.crop((left, top, left + image.width - cut, top + image.height - cut)))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--banked", type=int, default=500)
    parser.add_argument("--others", type=int, default=10000)
    parser.add_argument("--upscale", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    side = 28 * args.upscale

    def enlarge(image: Image.Image) -> Image.Image:
        return image if args.upscale == 1 else image.resize((side, side), Image.Resampling.BICUBIC)

    torch.set_num_threads(1)
    test, train = load_fashion_mnist("test"), load_fashion_mnist("train")
    images = test.images.numpy()[: args.banked]
    originals = [enlarge(Image.fromarray(a)) for a in images]
    banked = [hashes(save(image)) for image in originals]
    pdq = [h.pdq for h in banked if h.pdq is not None]
    bank = Bank(name="known", config=BankConfig(path="-", action="block"), uri="-", pdq_hex=pdq,
                pdq_labels=[None] * len(pdq), pdq_words=hex_to_words(pdq), md5={h.md5: None for h in banked})
    matcher = Matcher(MatchingConfig(banks={"known": BankConfig(path="-")}), [bank])
    transforms: dict[str, Callable[[Image.Image], bytes]] = {
        **{f"jpeg q{q}": (lambda image, q=q: save(image, "JPEG", quality=q)) for q in (50, 60, 75, 85, 95)},
        **{f"resize {f}x": resized(f) for f in (0.5, 0.75, 1.5, 2.0)},
        "crop 5% centred": cropped(0.05, centred=True), "crop 5% corner": cropped(0.05, centred=False),
    }
    attacked = pgd_copies(images, test.labels.numpy()[: args.banked], eps=8 / 255)
    rows = []

    def report(name: str, copies: list[ImageHashes], expect: list[int] | None) -> None:
        found = matcher.match(copies)
        if expect is None:  # images not in the bank: any match is false
            hits = sum(m is not None for m in found)
            row = {"copies": name, "n": len(copies), "false_matches": hits, "rate": hits / len(copies),
                   "ci95": wilson_interval(hits, len(copies))}
        else:
            own = [m is not None and m.hash in (banked[i].pdq, banked[i].md5) for i, m in zip(expect, found,
                                                                                                strict=True)]
            distances = [bin(int(c.pdq, 16) ^ int(banked[i].pdq, 16)).count("1")  # type: ignore[arg-type]
                         for i, c in zip(expect, copies, strict=True)]
            hits = sum(own)
            row = {"copies": name, "n": len(copies), "matched": hits, "rate": hits / len(copies),
                   "ci95": wilson_interval(hits, len(copies)),
                   "distance_p50_p95_max": [int(np.percentile(distances, 50)), int(np.percentile(distances, 95)),
                                            max(distances)],
                   "low_quality": sum((c.pdq_quality or 0) < 50 for c in copies)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    everyone = list(range(len(originals)))
    report("identical bytes (MD5)", [hashes(save(image)) for image in originals], everyone)
    for name, transform in transforms.items():
        report(name, [hashes(transform(image)) for image in originals], everyone)
    report("PGD 8/255 vs CLIP", [hashes(save(enlarge(Image.fromarray(a)))) for a in attacked], everyone)
    others = [hashes(save(enlarge(Image.fromarray(a)))) for a in train.images.numpy()[: args.others]]
    report(f"{args.others} other images", others, None)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
