from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cola_moderation.pipeline.research.evaluation.datasets import load_dataset, load_image_folder, load_parquet
from cola_moderation.pipeline.research.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, DatasetError

LABELS = CLASS_NAMES
needs_data = pytest.mark.skipif(not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def png(value: int, size: int = 20) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), color=value).save(buffer, format="PNG")
    return buffer.getvalue()


def test_parquet_skips_unusable_rows_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "set.parquet"
    pq.write_table(pa.table({
        "image": [png(10), png(200), png(30), b"not an image", png(40)],
        "true_label": ["trouser", "Ankle-Boot", None, "bag", "bag"],
        "attacked": [False, False, False, False, True],
    }), path)
    data = load_parquet(path, label_names=LABELS, size=28)
    assert data.pixels.shape == (2, 3, 28, 28)
    assert data.labels.tolist() == [LABELS.index("trouser"), LABELS.index("ankle_boot")]
    torch.testing.assert_close(data.pixels[0], torch.full((3, 28, 28), 10 / 255))
    assert data.skipped == {"no_label": 1, "attacked": 1, "undecodable": 1}
    assert data.summary()["per_class"] == {"trouser": 1, "ankle_boot": 1}
    assert len(data.head(1)) == 1


def test_parquet_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "set.parquet"
    pq.write_table(pa.table({"image": [png(1)], "label": ["giraffe"]}), path)
    with pytest.raises(DatasetError, match="giraffe"):
        load_parquet(path, label_names=LABELS, size=28)
    with pytest.raises(DatasetError, match="'picture' is missing"):
        load_parquet(path, label_names=LABELS, size=28, image_column="picture")
    pq.write_table(pa.table({"image": [png(1)], "kind": ["bag"]}), path)
    with pytest.raises(DatasetError, match="no label column"):
        load_parquet(path, label_names=LABELS, size=28)


def test_image_folder(tmp_path: Path) -> None:
    for name, value in (("bag", 50), ("sneaker", 100)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.png").write_bytes(png(value))
    (tmp_path / "bag" / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "bag" / "notes.txt").write_text("ignored")
    data = load_image_folder(tmp_path, label_names=LABELS, size=16)
    assert data.labels.tolist() == [LABELS.index("bag"), LABELS.index("sneaker")]
    assert data.skipped == {"undecodable": 1}
    (tmp_path / "zebra").mkdir()
    (tmp_path / "zebra" / "z.png").write_bytes(png(1))
    with pytest.raises(DatasetError, match="zebra"):
        load_dataset(str(tmp_path), label_names=LABELS, size=16)


def test_unknown_dataset_spec() -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        load_dataset("/nowhere/at/all", label_names=LABELS, size=28)


@needs_data
def test_fashion_mnist_first_images_resized() -> None:
    data = load_dataset("fashion-mnist", label_names=LABELS, size=32, limit=5)
    assert data.pixels.shape == (5, 3, 32, 32)
    assert data.labels.tolist() == [9, 2, 1, 1, 6]  # the first five labels of the test split
    assert float(data.pixels.min()) >= 0 and float(data.pixels.max()) <= 1


def test_parquet_integer_labels_in_taxonomy_order_and_label_column(tmp_path: Path) -> None:
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"image": [png(10), png(20), png(30)], "class_id": [1, 9, 0],
                             "label": ["bag", "bag", "bag"]}), path)
    data = load_dataset(str(path), label_names=LABELS, size=28, label_column="class_id")
    assert data.labels.tolist() == [1, 9, 0]
    by_name = load_dataset(str(path), label_names=LABELS, size=28)  # default column: names
    assert by_name.labels.tolist() == [LABELS.index("bag")] * 3
    pq.write_table(pa.table({"image": [png(10), png(20)], "label": ["3", "12"]}), tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match="12"):
        load_dataset(str(tmp_path / "bad.parquet"), label_names=LABELS, size=28)


@needs_data
def test_fashion_mnist_slices_and_train_split_are_named() -> None:
    test = load_dataset("fashion-mnist", label_names=LABELS, size=28, limit=5, offset=10)
    assert len(test) == 5 and test.summary()["slice"] == "[10:15]" and test.name == "fashion-mnist:test"
    train = load_dataset("fashion-mnist-train", label_names=LABELS, size=28, limit=3)
    assert train.name == "fashion-mnist:train" and train.slice_name == "[0:3]"
    assert not torch.equal(train.pixels, test.pixels[:3])
