"""Cost of scoring animated images frame by frame: decode + model time per input for a still PNG and for GIFs of
1..``--frames`` frames (all sampled, ``decode.max_frames`` = that count), on the reference config.

    python benchmarks/frame_sampling.py [--batch 16] [--repeats 5] [--frames 8] [--method clip|cola|cascade]

One torch thread. Prints, per input kind: ms per input for decoding alone, for decode + model, and the model's ms
per sampled frame (the marginal cost of a frame).
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from cola_moderation.pipeline.runtime.config import load_config
from cola_moderation.pipeline.runtime.library import build_moderator

REPO = Path(__file__).resolve().parent.parent
NAMES = ["bag", "trouser", "coat", "dress", "shirt", "sneaker", "pullover", "t_shirt"]


def gif(frames: int) -> bytes:
    images = [Image.open(REPO / "samples" / "images" / f"{NAMES[i % len(NAMES)]}.png").convert("RGB")
              for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buffer.getvalue()


def timed(function: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--method", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config("reference")
    config = config.model_copy(update={"decode": config.decode.model_copy(update={"max_frames": args.frames,
                                                                                   "workers": 1})})
    moderator = build_moderator(config, method=args.method)
    still = (REPO / "samples" / "images" / "bag.png").read_bytes()
    kinds = {"still PNG": (still, 1), **{f"GIF {n} frames": (gif(n), n) for n in sorted({1, 2, 4, args.frames})}}
    print(f"method {moderator.method}, batch {args.batch}, best of {args.repeats}, 1 torch thread")
    for name, (data, frames) in kinds.items():
        items = [data] * args.batch
        moderator.moderate(items)  # warm-up
        decode_s = timed(partial(moderator.decoder.decode, items), args.repeats) / args.batch
        total_s = timed(partial(moderator.moderate, items), args.repeats) / args.batch
        model_s = total_s - decode_s
        print(f"{name:>14}: decode {decode_s * 1e3:6.2f} ms, decode+model {total_s * 1e3:6.2f} ms per input; "
              f"model {model_s / frames * 1e3:5.2f} ms per frame")
    moderator.close()


if __name__ == "__main__":
    main()
