"""Decode: draft mode + parallel threads vs naive single-threaded decode + resize, on 1024x768 JPEGs.

    ./dev bench decode_throughput [--images 64] [--repeats 5]

Goal (issue 2): >= 2x.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch
from _common import interleaved, photo_like_jpegs
from PIL import Image

from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.decode import ImageDecoder


def naive_decode(data: bytes, size: int) -> torch.Tensor:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    array = np.asarray(image.crop((left, top, left + size, top + size)))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    jpegs = photo_like_jpegs(args.images)
    draft_only = ImageDecoder(size=224, config=DecodeConfig(draft=True, workers=1))
    ours = ImageDecoder(size=224, config=DecodeConfig(draft=True, workers=2))
    times = interleaved({
        "naive (1 thread, full decode)": lambda: [naive_decode(j, 224) for j in jpegs],
        "draft (1 thread)": lambda: draft_only.decode(jpegs),
        "draft + 2 threads (ours)": lambda: ours.decode(jpegs),
    }, repeats=args.repeats)
    naive = times["naive (1 thread, full decode)"]
    print(f"{args.images} JPEGs 1024x768 -> 224x224, median of {args.repeats}:")
    for name, seconds in times.items():
        print(f"  {name:32s} {args.images / seconds:8.1f} img/s   {naive / seconds:5.2f}x naive")
    ours.close()
    draft_only.close()


if __name__ == "__main__":
    main()
