"""Regenerate the committed sample data from the Fashion-MNIST test split (deterministic).

    python samples/make_samples.py            # writes samples/sample.parquet and samples/images/

``sample.parquet``: 300 test images (30 per class, PNG bytes) plus 4 corrupt records (truncated PNG, empty bytes,
not-an-image, PNG with a broken checksum) whose ``true_label`` is null. Columns: ``id``, ``image``, ``true_label``,
``test_index`` (row in the Fashion-MNIST test split), ``uploader``, ``source``, ``uploaded_at``, ``attacked``.
After every ``ATTACK_EVERY``-th clean image comes an adversarially attacked copy of it (``attacked`` true, same
``true_label`` and ``test_index``, ``source`` ``pgd-8/255-on-clip``, RGB PNG): L-inf PGD at 8/255, 10 steps,
crafted on plain zero-shot CLIP of the bundled reference model (the gray-box attack of ``cola eval --attack pgd``,
made by its harness), so the demo shows attacked uploads being flagged. ``images/``: one image per class for
``cola classify``, one of them as JPEG, and one corrupt file.
Fashion-MNIST is (c) Zalando SE, MIT license.
"""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cola_moderation.pipeline.research.fashion_mnist import CLASS_NAMES, load_fashion_mnist

HERE = Path(__file__).resolve().parent
PER_CLASS = 30
SEED = 20251029
UPLOADERS = ("alice", "bob", "carol", "dmitri", "eun-ji", "farah")
CORRUPT_AT = {37: "truncated", 101: "empty", 188: "not-an-image", 260: "bad-checksum"}
LOOSE = ("sneaker", "bag", "t_shirt", "trouser", "dress", "ankle_boot", "pullover", "coat", "shirt")
JPEG_CLASS = "sandal"
ATTACK_EVERY = 15
ATTACK_EPS = Fraction(8, 255)
ATTACK_STEPS = 10


def png_bytes(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.numpy(), mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def corrupt(kind: str, valid_png: bytes) -> bytes:
    if kind == "truncated":
        return valid_png[: len(valid_png) // 2]
    if kind == "empty":
        return b""
    if kind == "not-an-image":
        return b"<html><body>this upload is not an image</body></html>\n"
    broken = bytearray(valid_png)
    broken[40] ^= 0xFF  # inside the IDAT chunk: the zlib stream / CRC no longer match
    return bytes(broken)


def rgb_png_bytes(pixels: torch.Tensor) -> bytes:
    """``[3, S, S]`` in [0, 1] -> RGB PNG (rounded to 8 bits, as an upload would be)."""
    array = (pixels.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def attacked_copies(images: torch.Tensor, labels: list[str]) -> list[bytes]:
    """PGD copies of ``[n, 28, 28]`` uint8 images, crafted with the ``cola eval`` harness on plain CLIP of the
    bundled reference model (configs/reference.yaml), deterministic (seed 0)."""
    from cola_moderation.operators.backbones.registry import load_backbone
    from cola_moderation.pipeline.research.evaluation.harness import AttackSpec, Harness
    from cola_moderation.pipeline.runtime.config import load_config

    config = load_config(HERE.parent / "configs" / "reference.yaml")
    backbone = load_backbone(config.model.model_copy(update={"device": "cpu"}))
    harness = Harness(backbone, taxonomy=config.taxonomy, cola=config.cola, detector=config.detector)
    names = config.taxonomy.label_names
    pixels = images.unsqueeze(1).expand(-1, 3, -1, -1).float().div(255.0)
    targets = torch.tensor([names.index(label) for label in labels])
    spec = AttackSpec(name="pgd", eps=(ATTACK_EPS,), steps=ATTACK_STEPS, seed=0)
    (adversarial,) = harness.craft([(pixels, targets)], spec, ATTACK_EPS)
    return [rgb_png_bytes(x) for x in adversarial]


def select(labels: torch.Tensor) -> list[int]:
    """``PER_CLASS`` test indices per class, drawn with a fixed seed, interleaved class by class."""
    generator = torch.Generator().manual_seed(SEED)
    per_class = [torch.nonzero(labels == k).flatten() for k in range(len(CLASS_NAMES))]
    picks = [pool[torch.randperm(len(pool), generator=generator)[:PER_CLASS]].tolist() for pool in per_class]
    order = [index for row in zip(*picks, strict=True) for index in row]
    shuffle = torch.randperm(len(order), generator=generator).tolist()
    return [order[i] for i in shuffle]


def main() -> None:
    test = load_fashion_mnist("test")
    indices = select(test.labels)
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    rows: dict[str, list[object]] = {name: [] for name in
                                     ("id", "image", "true_label", "test_index", "uploader", "source", "uploaded_at",
                                      "attacked")}

    def add(id_: str, image: bytes, label: str | None, index: int | None, source: str,
            attacked: bool = False) -> None:
        n = len(rows["id"])
        rows["id"].append(id_)
        rows["image"].append(image)
        rows["true_label"].append(label)
        rows["test_index"].append(index)
        rows["uploader"].append(UPLOADERS[n % len(UPLOADERS)])
        rows["source"].append(source)
        rows["uploaded_at"].append(start + timedelta(minutes=7 * n))
        rows["attacked"].append(attacked)

    to_attack = indices[ATTACK_EVERY - 1 :: ATTACK_EVERY]
    adversarial = dict(zip(to_attack, attacked_copies(test.images[to_attack],
                                                      [CLASS_NAMES[int(test.labels[i])] for i in to_attack]),
                           strict=True))
    for position, index in enumerate(indices):
        if position in CORRUPT_AT:
            kind = CORRUPT_AT[position]
            add(f"corrupt-{kind}", corrupt(kind, png_bytes(test.images[index])), None, None, "synthetic-corrupt")
        label = CLASS_NAMES[int(test.labels[index])]
        add(f"fmnist-test-{index:05d}", png_bytes(test.images[index]), label, index, "fashion-mnist-test")
        if index in adversarial:
            add(f"fmnist-test-{index:05d}-pgd8", adversarial[index], label, index,
                f"pgd-{ATTACK_EPS.numerator}/255-on-clip", attacked=True)
    table = pa.table({
        "id": pa.array(rows["id"], pa.string()),
        "image": pa.array(rows["image"], pa.binary()),
        "true_label": pa.array(rows["true_label"], pa.string()),
        "test_index": pa.array(rows["test_index"], pa.int32()),
        "uploader": pa.array(rows["uploader"], pa.string()),
        "source": pa.array(rows["source"], pa.string()),
        "uploaded_at": pa.array(rows["uploaded_at"], pa.timestamp("ms", tz="UTC")),
        "attacked": pa.array(rows["attacked"], pa.bool_()),
    })
    pq.write_table(table, HERE / "sample.parquet", compression="zstd", row_group_size=128)

    images = HERE / "images"
    images.mkdir(exist_ok=True)
    first: dict[str, int] = {}
    for index in indices:
        first.setdefault(CLASS_NAMES[int(test.labels[index])], index)
    for name in LOOSE:
        (images / f"{name}.png").write_bytes(png_bytes(test.images[first[name]]))
    rgb = Image.fromarray(test.images[first[JPEG_CLASS]].numpy(), mode="L").convert("RGB")
    rgb.save(images / f"{JPEG_CLASS}.jpg", format="JPEG", quality=95)
    (images / "corrupt.png").write_bytes(corrupt("truncated", png_bytes(test.images[first["bag"]])))
    print(f"wrote {table.num_rows} rows to {HERE / 'sample.parquet'} and {len(LOOSE) + 2} files to {images}")


if __name__ == "__main__":
    main()
