"""COLA's own cost (projection + weights + OT) next to the N-view image encoding, and cascade vs plain CLIP.

    ./dev bench cola_overhead [--batch 64] [--classes 1000] [--texts 50] [--views 5] [--repeats 3]

ViT-B/32-shaped CLIPModel (random weights: speed does not depend on them), CPU, random unit text embeddings
(K classes x M texts). Goals (issue 4): projection + weights + OT <= 10% of the N-view encoding; cascade >= 0.8x
plain CLIP throughput on clean images. The cascade's cost depends only on the share of images it sends to COLA;
``--escalation`` sets it (measure it on clean images of a trained model: benchmarks/robustness_sweep.py prints it
for the reference model, together with a direct cascade-vs-plain measurement there).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import interleaved, vit_b32_dir

from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.config import (
    ColaConfig,
    DetectorConfig,
    ModelConfig,
    ProjectionConfig,
    TaxonomyConfig,
    ViewsConfig,
)
from cola_moderation.operators.defences.cola.scorer import ColaScorer
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.moderator import Moderator


def random_bank(classes: int, texts: int, dim: int, *, seed: int = 0) -> TextBank:
    """K x M random unit text embeddings."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(classes, texts, dim, generator=generator), dim=-1)
    return TextBank(labels=tuple(f"class{k}" for k in range(classes)), embeddings=embeddings,
                    mask=torch.ones(classes, texts, dtype=torch.bool))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--texts", type=int, default=50)
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--rank", type=int, default=256, help="subspace rank C (paper: 256 for d=512, K=1000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--escalation", type=float, default=0.05,
                        help="share of clean images the cascade sends to COLA (measure it with robustness_sweep)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 gives stable numbers on a loaded shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    backbone = load_backbone(ModelConfig(path=str(vit_b32_dir()), device="cpu"))
    size = backbone.geometry.size
    pixels = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    config = ColaConfig(views=ViewsConfig(count=args.views), projection=ProjectionConfig(rank=args.rank))
    bank = random_bank(args.classes, args.texts, backbone.embed_dim)
    scorer = ColaScorer(bank, config, logit_scale=backbone.logit_scale)
    views = scorer.views(pixels).flatten(0, 1)
    features = backbone.encode_images(views).view(args.batch, args.views, -1)

    times = interleaved({
        "N-view image encoding": lambda: backbone.encode_images(views),
        "COLA: projection + weights + OT": lambda: scorer.score_embeddings(features),
    }, repeats=args.repeats)
    encode, cola = times["N-view image encoding"], times["COLA: projection + weights + OT"]
    print(f"ViT-B/32 shape, CPU ({torch.get_num_threads()} threads), batch {args.batch}, K={args.classes} x "
          f"M={args.texts} texts, N={args.views} views, C={scorer.subspace.rank}, "
          f"OT eps={config.transport.eps} max_iter={config.transport.max_iter}, median of {args.repeats}:")
    for name, seconds in times.items():
        print(f"  {name:34s} {seconds * 1000:9.1f} ms")
    print(f"ratio COLA scoring / N-view encoding: {cola / encode:.3f}  (goal <= 0.10)")

    # Cascade vs plain CLIP. Random weights give no real classes (and near-identical image embeddings), so the
    # share of clean images the cascade sends to COLA is taken from a trained model (benchmarks/robustness_sweep.py
    # prints it for the reference model on Fashion-MNIST) and reproduced here through the real cascade code path by
    # setting cascade_margin to that quantile of CLIP's margins (detector pre-screen off).
    plain = Moderator(backbone, taxonomy=TaxonomyConfig(labels=bank.labels), method="clip", cola=config, bank=bank)
    margins = plain.scores(pixels).margin()
    cascade_margin = float(torch.quantile(margins, args.escalation)) if args.escalation > 0 else 0.0
    cascade = Moderator(backbone, taxonomy=TaxonomyConfig(labels=bank.labels), method="cascade", bank=bank,
                        cola=config.model_copy(update={"cascade_margin": cascade_margin}),
                        detector=DetectorConfig(enabled=False))
    escalated = float(cascade.verdict(pixels).cola_applied.float().mean())
    full = Moderator(backbone, taxonomy=TaxonomyConfig(labels=bank.labels), method="cola", cola=config, bank=bank)
    times = interleaved({
        "plain CLIP": lambda: plain.verdict(pixels),
        f"cascade ({escalated:.1%} sent to COLA)": lambda: cascade.verdict(pixels),
        "COLA on every image": lambda: full.verdict(pixels),
    }, repeats=args.repeats)
    seconds = list(times.values())
    print(f"throughput, batch {args.batch}:")
    for name, value in times.items():
        print(f"  {name:34s} {args.batch / value:9.1f} img/s")
    per_escalated = (seconds[2] - seconds[0]) / args.batch
    break_even = (seconds[0] / 0.8 - seconds[0]) / args.batch / per_escalated
    print(f"ratio cascade / plain CLIP throughput: {seconds[0] / seconds[1]:.2f}  (goal >= 0.8; the cascade "
          f"stays >= 0.8x while it sends <= {break_even:.1%} of images to COLA)")
    for moderator in (plain, cascade, full):
        moderator.close()

if __name__ == "__main__":
    main()
