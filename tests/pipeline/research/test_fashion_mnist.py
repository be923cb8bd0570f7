"""The Fashion-MNIST loader reads Debian's gzipped IDX files and fails clearly when they are missing or malformed."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from cola_moderation.pipeline.research.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, DatasetError, load_fashion_mnist

needs_data = pytest.mark.skipif(not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="sudo apt-get install dataset-fashion-mnist")


@needs_data
def test_test_split_shapes_and_balance() -> None:
    test = load_fashion_mnist("test")
    assert test.images.shape == (10_000, 28, 28) and test.images.dtype == torch.uint8
    assert test.labels.shape == (10_000,) and test.labels.dtype == torch.int64
    assert torch.bincount(test.labels).tolist() == [1000] * len(CLASS_NAMES)
    pixels = test.pixels(slice(0, 4))
    assert pixels.shape == (4, 3, 28, 28)
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])
    torch.testing.assert_close(pixels[0, 0] * 255, test.images[0].float())


def _write_idx(path: Path, magic: int, shape: tuple[int, ...], payload: bytes) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
    path.write_bytes(gzip.compress(header + payload))


def test_reads_idx_files_from_another_root(tmp_path: Path) -> None:
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, (2, 28, 28), bytes(range(256)) * 6 + bytes(32))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, (2,), bytes([7, 8]))
    data = load_fashion_mnist("test", root=tmp_path)
    assert len(data) == 2
    assert data.labels.tolist() == [7, 8]
    assert int(data.images[0, 0, 5]) == 5


def test_missing_directory_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path / "nowhere")


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz is missing"):
        load_fashion_mnist("test", root=tmp_path)


def test_malformed_files_are_rejected(tmp_path: Path) -> None:
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, (2, 28, 28), bytes(100))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, (2,), bytes([0, 1]))
    with pytest.raises(DatasetError, match="header declares shape"):
        load_fashion_mnist("test", root=tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x801, (2, 28, 28), bytes(2 * 784))
    with pytest.raises(DatasetError, match="magic"):
        load_fashion_mnist("test", root=tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, (2, 28, 28), bytes(2 * 784))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, (2,), bytes([0, 12]))
    with pytest.raises(DatasetError, match="out of range"):
        load_fashion_mnist("test", root=tmp_path)


def test_unknown_split() -> None:
    with pytest.raises(DatasetError, match="unknown Fashion-MNIST split 'validation'"):
        load_fashion_mnist("validation")  # type: ignore[arg-type]
