"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (gzipped IDX files), as uint8 tensors.

Install the data with ``sudo apt-get install dataset-fashion-mnist``; it lands in
``/usr/share/datasets/fashion-mnist/``. Another directory holding the same four ``*-idx?-ubyte.gz`` files (e.g. the
upstream download from https://github.com/zalandoresearch/fashion-mnist) can be passed as ``root``.
Fashion-MNIST is (c) Zalando SE, released under the MIT license.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cola_moderation.operators.errors import ColaError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu)"
CLASS_NAMES: tuple[str, ...] = (
    "t_shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
"""Label names in the dataset's label order (0 = T-shirt/top ... 9 = Ankle boot)."""
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
Split = Literal["train", "test"]


class DatasetError(ColaError, OSError):
    """A dataset is missing or its files are malformed."""

    stage = "data"


@dataclass(frozen=True)
class FashionMnist:
    """One split: ``images`` is ``[N, 28, 28]`` uint8 (white garment on black), ``labels`` is ``[N]`` int64 in
    ``0..9`` indexing :data:`CLASS_NAMES`."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def pixels(self, indices: torch.Tensor | slice | None = None) -> torch.Tensor:
        """``[n, 3, 28, 28]`` float32 RGB pixels in [0, 1] (the grey channel repeated), as backbones expect."""
        images = self.images if indices is None else self.images[indices]
        return images.unsqueeze(1).expand(-1, 3, -1, -1).float().div(255.0)


def _read_idx(path: Path, *, magic: int, dims: int) -> np.ndarray:
    try:
        data = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise DatasetError(f"Fashion-MNIST file {path} is missing; {INSTALL_HINT}") from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read Fashion-MNIST file {path}: {exc}") from None
    header = 4 + 4 * dims
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise DatasetError(f"{path} is not an IDX file with magic {magic:#x}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if len(data) - header != int(np.prod(shape)):
        raise DatasetError(f"{path}: header declares shape {shape} but holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(split: Split, *, root: Path | str = DEFAULT_ROOT) -> FashionMnist:
    """Read one split (``train``: 60,000 images, ``test``: 10,000) from ``root``."""
    if split not in FILES:
        raise DatasetError(f"unknown Fashion-MNIST split {split!r}; expected 'train' or 'test'")
    directory = Path(root)
    if not directory.is_dir():
        raise DatasetError(f"Fashion-MNIST directory {directory} does not exist; {INSTALL_HINT}")
    image_file, label_file = FILES[split]
    images = _read_idx(directory / image_file, magic=0x803, dims=3)
    labels = _read_idx(directory / label_file, magic=0x801, dims=1)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise DatasetError(f"{directory}: {split} images {images.shape} do not match labels {labels.shape}")
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise DatasetError(f"{directory / label_file}: label {int(labels.max())} out of range 0..9")
    return FashionMnist(images=torch.from_numpy(images.copy()), labels=torch.from_numpy(labels.astype(np.int64)))
