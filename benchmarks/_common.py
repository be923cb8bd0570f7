"""Helpers shared by the benchmark scripts: synthetic photos, a ViT-B/32-shaped model, interleaved timing."""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def photo_like_jpegs(count: int, *, width: int = 1024, height: int = 768, seed: int = 0) -> list[bytes]:
    """JPEGs with smooth structure plus sensor-like noise (decode cost close to real photos)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images = []
    for _ in range(count):
        fx, fy, phase = rng.uniform(0.002, 0.02, 3)
        base = 127 + 100 * np.sin(xx * fx + phase * 100) * np.cos(yy * fy)
        channels = [base + rng.normal(0, 12, base.shape) + shift for shift in rng.uniform(-40, 40, 3)]
        array = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def vit_b32_dir() -> Path:
    """A ViT-B/32-shaped CLIPModel with random weights saved in the standard layout (speed does not depend on
    the weights)."""
    from cola_moderation.operators.backbones.checkpoint import VIT_B_32, new_clip_model, save_checkpoint

    directory = Path(tempfile.gettempdir()) / "cola-bench-vit-b32"
    if not (directory / "model.safetensors").exists():
        save_checkpoint(new_clip_model(VIT_B_32), directory, image_size=VIT_B_32.image_size)
    return directory


def open_clip_vit_b32_dir() -> Path:
    """open_clip's ViT-B-32 (open_clip_config.json + safetensors) with random weights."""
    from cola_moderation.operators.backbones.checkpoint import OPEN_CLIP_VIT_B_32, save_open_clip_checkpoint

    directory = Path(tempfile.gettempdir()) / "cola-bench-open-clip-vit-b32"
    if not (directory / "open_clip_model.safetensors").exists():
        save_open_clip_checkpoint(directory, OPEN_CLIP_VIT_B_32)
    return directory


def siglip_vit_b32_dir() -> Path:
    """A SigLIP with a ViT-B/32-shaped image tower (224 px, patch 32, width 768, 12 layers) and random weights."""
    from cola_moderation.operators.backbones.checkpoint import SIGLIP_VIT_B_32, save_siglip_checkpoint

    directory = Path(tempfile.gettempdir()) / "cola-bench-siglip-vit-b32"
    if not (directory / "model.safetensors").exists():
        save_siglip_checkpoint(directory, SIGLIP_VIT_B_32)
    return directory


def family_dirs() -> dict[str, Path]:
    """One ViT-B/32-shaped random-weight checkpoint per backbone family."""
    return {"clip": vit_b32_dir(), "open_clip": open_clip_vit_b32_dir(), "siglip": siglip_vit_b32_dir()}


def interleaved(runs: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Run each callable ``repeats`` times, interleaved so machine noise hits all alike; median seconds each."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
