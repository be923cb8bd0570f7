"""Plain zero-shot path vs the image encoder alone vs the transformers pipeline, side by side.

    ./dev bench zero_shot_throughput [--images 32] [--repeats 3]

ViT-B/32-shaped CLIPModel (random weights: speed does not depend on them), 1024x768 JPEGs, 10 labels, one batch.
Goals (issue 2): ours >= 0.85x the encoder alone (the ceiling), and >= 2x the transformers pipeline.
"""

from __future__ import annotations

import argparse
import io

import torch
from _common import interleaved, photo_like_jpegs, vit_b32_dir
from PIL import Image

from cola_moderation.operators.backbones.transformers_clip import ClipBackbone
from cola_moderation.operators.config import DecodeConfig, ModelConfig, TaxonomyConfig
from cola_moderation.operators.decode import ImageDecoder
from cola_moderation.operators.moderator import Moderator

LABELS = ("cat", "dog", "car", "tree", "house", "person", "bicycle", "boat", "bird", "flower")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    directory = vit_b32_dir()
    jpegs = photo_like_jpegs(args.images)
    taxonomy = TaxonomyConfig(labels=LABELS, templates=("a photo of a {}.",), top_k=5)
    backbone = ClipBackbone.load(ModelConfig(path=str(directory), device="cpu"))
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


if __name__ == "__main__":
    main()
