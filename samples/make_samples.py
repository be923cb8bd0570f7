"""Regenerate the committed sample data from the Fashion-MNIST test split (deterministic).

    python samples/make_samples.py            # writes samples/sample.parquet and samples/images/

``sample.parquet``: 300 test images (30 per class, PNG bytes) plus 4 corrupt records (truncated PNG, empty bytes,
not-an-image, PNG with a broken checksum) whose ``true_label`` is null. Columns: ``id``, ``image``, ``true_label``,
``test_index`` (row in the Fashion-MNIST test split), ``uploader``, ``source``, ``uploaded_at``, ``attacked``
(False everywhere: reserved for adversarially attacked copies). ``images/``: one image per class for
``cola classify``, one of them as JPEG, and one corrupt file.
Fashion-MNIST is (c) Zalando SE, MIT license.
"""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.fashion_mnist import CLASS_NAMES, load_fashion_mnist

HERE = Path(__file__).resolve().parent
PER_CLASS = 30
SEED = 20251029
UPLOADERS = ("alice", "bob", "carol", "dmitri", "eun-ji", "farah")
CORRUPT_AT = {37: "truncated", 101: "empty", 188: "not-an-image", 260: "bad-checksum"}
LOOSE = ("sneaker", "bag", "t_shirt", "trouser", "dress", "ankle_boot", "pullover", "coat", "shirt")
JPEG_CLASS = "sandal"


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

    def add(id_: str, image: bytes, label: str | None, index: int | None, source: str) -> None:
        n = len(rows["id"])
        rows["id"].append(id_)
        rows["image"].append(image)
        rows["true_label"].append(label)
        rows["test_index"].append(index)
        rows["uploader"].append(UPLOADERS[n % len(UPLOADERS)])
        rows["source"].append(source)
        rows["uploaded_at"].append(start + timedelta(minutes=7 * n))
        rows["attacked"].append(False)

    for position, index in enumerate(indices):
        if position in CORRUPT_AT:
            kind = CORRUPT_AT[position]
            add(f"corrupt-{kind}", corrupt(kind, png_bytes(test.images[index])), None, None, "synthetic-corrupt")
        add(f"fmnist-test-{index:05d}", png_bytes(test.images[index]), CLASS_NAMES[int(test.labels[index])], index,
            "fashion-mnist-test")
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
    first = {}
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
