"""Plain zero-shot path vs the image encoder alone vs the transformers pipeline, side by side; then each backbone
family's image encoder (transformers CLIP, open_clip, SigLIP), fp32 and bf16.

    ./dev bench zero_shot_throughput [--images 32] [--repeats 3] [--no-families] [--agreement 10000]

ViT-B/32-shaped CLIPModel (random weights: speed does not depend on them), 1024x768 JPEGs, 10 labels, one batch.
Goals: ours >= 0.95x the encoder alone (the ceiling; issue 26, was 0.85 in issue 2), and >= 2x the transformers
pipeline. "Without decoding ahead" is the same call with the whole batch decoded before the model starts (what
``Moderator.moderate`` did before it overlapped the two).
Per family (issue 23): the ViT-B/32-shaped image tower of each family on the same pre-decoded 224 px batch.
bf16 rows (issue 26): the same paths with bf16 weights (``model.dtype: bf16``, what ``auto`` picks on a CPU with
native bf16), and their top-1 agreement with fp32 on the first ``--agreement`` Fashion-MNIST test images with the
bundled reference model and configs/reference.yaml (plain path and the configured cascade; speed needs a big model,
agreement a trained one). Goal: bf16 plain path >= 1.8x fp32, agreement >= 99.5%.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
from _common import family_dirs, interleaved, photo_like_jpegs, vit_b32_dir
from PIL import Image

from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.config import DecodeConfig, ModelConfig, TaxonomyConfig
from cola_moderation.operators.decode import ImageDecoder
from cola_moderation.operators.moderator import Moderator

LABELS = ("cat", "dog", "car", "tree", "house", "person", "bicycle", "boat", "bird", "flower")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-families", action="store_true", help="skip the per-family image-encoder rows")
    parser.add_argument("--agreement", type=int, default=10_000, help="Fashion-MNIST test images (0: skip)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    directory = vit_b32_dir()
    jpegs = photo_like_jpegs(args.images)
    taxonomy = TaxonomyConfig(labels=LABELS, templates=("a photo of a {}.",), top_k=5)
    backbone = load_backbone(ModelConfig(path=str(directory), device="cpu"))
    moderator = Moderator(backbone, taxonomy=taxonomy, decode=DecodeConfig(workers=2))
    moderator.batch_size = args.images
    backbone_bf16 = load_backbone(ModelConfig(path=str(directory), device="cpu", dtype="bf16"))
    moderator_bf16 = Moderator(backbone_bf16, taxonomy=taxonomy, decode=DecodeConfig(workers=2))
    moderator_bf16.batch_size = args.images
    with ImageDecoder(size=224) as decoder:
        pixels = decoder.decode(jpegs).pixels

    from transformers import CLIPModel, CLIPTokenizer, pipeline
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    hf = pipeline("zero-shot-image-classification", model=CLIPModel.from_pretrained(directory),
                  tokenizer=CLIPTokenizer.from_pretrained(directory),
                  image_processor=CLIPImageProcessorPil.from_pretrained(directory), device="cpu")

    def run_pipeline() -> object:
        images = [Image.open(io.BytesIO(j)) for j in jpegs]
        return hf(images, candidate_labels=list(LABELS), hypothesis_template="a photo of a {}.",
                  batch_size=args.images)

    times = interleaved({
        "image encoder alone (pre-decoded)": lambda: backbone.encode_images(pixels),
        "ours: decode+preprocess+encode+scores": lambda: moderator.moderate(jpegs),
        "ours without decoding ahead": lambda: moderator.moderate_decoded(moderator.decoder.decode(jpegs), len(jpegs)),
        "transformers zero-shot pipeline": run_pipeline,
        "bf16: image encoder alone": lambda: backbone_bf16.encode_images(pixels),
        "bf16: ours decode+preprocess+encode+scores": lambda: moderator_bf16.moderate(jpegs),
        "bf16: ours without decoding ahead": lambda: moderator_bf16.moderate_decoded(
            moderator_bf16.decoder.decode(jpegs), len(jpegs)),
    }, repeats=args.repeats)
    encoder = times["image encoder alone (pre-decoded)"]
    ours = times["ours: decode+preprocess+encode+scores"]
    print(f"ViT-B/32 shape, {args.images} JPEGs 1024x768, {len(LABELS)} labels, batch {args.images}, "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats}:")
    for name, seconds in times.items():
        print(f"  {name:40s} {args.images / seconds:7.1f} img/s")
    print(f"ratio ours / encoder alone: {encoder / ours:.2f}  (goal >= 0.95; without decoding ahead: "
          f"{encoder / times['ours without decoding ahead']:.2f})")
    print(f"ratio ours / transformers pipeline: {times['transformers zero-shot pipeline'] / ours:.2f}  (goal >= 2)")
    ours_bf16 = times["bf16: ours decode+preprocess+encode+scores"]
    print(f"ratio bf16 / fp32, ours: {ours / ours_bf16:.2f}  (goal >= 1.8); encoder alone: "
          f"{encoder / times['bf16: image encoder alone']:.2f}; bf16 ours / bf16 encoder alone: "
          f"{times['bf16: image encoder alone'] / ours_bf16:.2f} (without decoding ahead: "
          f"{times['bf16: image encoder alone'] / times['bf16: ours without decoding ahead']:.2f})")
    moderator.close()
    moderator_bf16.close()
    if not args.no_families:
        family_rows(pixels, repeats=args.repeats)
    if args.agreement:
        agreement(args.agreement)


def family_rows(pixels: torch.Tensor, *, repeats: int) -> None:
    """Each family's ViT-B/32-shaped image encoder on the same pixels, fp32 and bf16 (CPU)."""
    encoders = {}
    for family, directory in family_dirs().items():
        for dtype in ("fp32", "bf16"):
            backbone = load_backbone(ModelConfig(path=str(directory), device="cpu", dtype=dtype))
            assert backbone.family == family
            encoders[f"{family} {dtype}"] = lambda b=backbone: b.encode_images(pixels)
    times = interleaved(encoders, repeats=repeats)
    print(f"image encoder per family (ViT-B/32 shape, random weights, {len(pixels)} pre-decoded 224 px images, "
          f"median of {repeats}):")
    for name, seconds in times.items():
        print(f"  {name:20s} {len(pixels) / seconds:7.1f} img/s")


def agreement(count: int) -> None:
    """Top-1 agreement bf16 vs fp32 on ``count`` Fashion-MNIST test images (reference model, its config)."""
    from cola_moderation.pipeline.research.fashion_mnist import DatasetError, load_fashion_mnist
    from cola_moderation.pipeline.runtime.config import load_config
    from cola_moderation.pipeline.runtime.library import build_moderator

    try:
        data = load_fashion_mnist("test")
    except DatasetError as error:
        print(f"agreement: not run ({error})")
        return
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "reference.yaml")
    pixels, labels = data.pixels(slice(0, count)), data.labels[:count]
    answers: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for dtype in ("fp32", "bf16"):
        moderator = build_moderator(config.model_copy(update={"model": config.model.model_copy(
            update={"dtype": dtype, "device": "cpu"})}))
        plain, cascade, flagged = [], [], []
        for start in range(0, len(labels), 256):
            chunk = pixels[start : start + 256]
            plain.append(moderator.scores(chunk).probs.argmax(-1))
            verdict = moderator.verdict(chunk)
            cascade.append(verdict.scores.probs.argmax(-1))
            flagged.append(verdict.suspected)
        answers[dtype] = (torch.cat(plain), torch.cat(cascade), torch.cat(flagged))
        moderator.close()
    (p32, c32, f32), (p16, c16, f16) = answers["fp32"], answers["bf16"]
    print(f"reference model, {len(labels)} Fashion-MNIST test images, configs/reference.yaml ({config.method}):")
    print(f"  top-1 agreement bf16 vs fp32: plain {(p32 == p16).float().mean():.2%} (goal >= 99.5%), "
          f"{config.method} {(c32 == c16).float().mean():.2%}")
    print(f"  accuracy fp32 / bf16: plain {(p32 == labels).float().mean():.2%} / {(p16 == labels).float().mean():.2%}, "
          f"{config.method} {(c32 == labels).float().mean():.2%} / {(c16 == labels).float().mean():.2%}")
    print(f"  flagged as suspected adversarial (fp32 calibration): fp32 {f32.float().mean():.2%}, bf16 "
          f"{f16.float().mean():.2%}")


if __name__ == "__main__":
    main()
