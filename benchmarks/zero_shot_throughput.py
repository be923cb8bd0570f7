"""Plain zero-shot path vs the image encoder alone vs the transformers pipeline, side by side; then each backbone
family's image encoder (transformers CLIP, open_clip, SigLIP), fp32 and bf16.

    ./dev bench zero_shot_throughput [--images 32] [--repeats 3] [--no-families]

ViT-B/32-shaped CLIPModel (random weights: speed does not depend on them), 1024x768 JPEGs, 10 labels, one batch.
Goals (issue 2): ours >= 0.85x the encoder alone (the ceiling), and >= 2x the transformers pipeline.
Per family (issue 23): the ViT-B/32-shaped image tower of each family on the same pre-decoded 224 px batch.
"""

from __future__ import annotations

import argparse
import io

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
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    directory = vit_b32_dir()
    jpegs = photo_like_jpegs(args.images)
    taxonomy = TaxonomyConfig(labels=LABELS, templates=("a photo of a {}.",), top_k=5)
    backbone = load_backbone(ModelConfig(path=str(directory), device="cpu"))
    moderator = Moderator(backbone, taxonomy=taxonomy, decode=DecodeConfig(workers=2))
    moderator.batch_size = args.images
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
        "transformers zero-shot pipeline": run_pipeline,
    }, repeats=args.repeats)
    encoder = times["image encoder alone (pre-decoded)"]
    ours = times["ours: decode+preprocess+encode+scores"]
    print(f"ViT-B/32 shape, {args.images} JPEGs 1024x768, {len(LABELS)} labels, batch {args.images}, "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats}:")
    for name, seconds in times.items():
        print(f"  {name:40s} {args.images / seconds:7.1f} img/s")
    print(f"ratio ours / encoder alone: {encoder / ours:.2f}  (goal >= 0.85)")
    print(f"ratio ours / transformers pipeline: {times['transformers zero-shot pipeline'] / ours:.2f}  (goal >= 2)")
    moderator.close()
    if not args.no_families:
        family_rows(pixels, repeats=args.repeats)


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


if __name__ == "__main__":
    main()
