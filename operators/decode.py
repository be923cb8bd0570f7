"""Image bytes -> RGB float tensors at the model's input size.

Decoding is defensive: the header is read first and images declaring more than ``max_pixels`` are refused before
any pixel buffer is allocated. Every failure raises :class:`~cola_moderation.operators.errors.DecodeError` with a
specific message;
callers turn it into a dead-letter record or an error line.

Geometry follows CLIP's image processor: resize the shortest side to ``size`` (bicubic), centre-crop ``size`` x
``size``. Pixels come out in [0, 1]; the mean/std normalisation happens inside the backbone, so attacks and
augmentations work in pixel space.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.errors import DecodeError

SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})


def decode_image(data: bytes, *, size: int, config: DecodeConfig | None = None) -> torch.Tensor:
    """Decode one encoded image into a ``[3, size, size]`` float32 tensor in [0, 1]."""
    image = open_image(data, size=size, config=config or DecodeConfig())
    return to_tensor(resize_center_crop(image, size))


def open_image(data: bytes, *, size: int, config: DecodeConfig) -> Image.Image:
    """Validate and fully decode ``data`` into an RGB PIL image (EXIF orientation applied, not yet resized)."""
    if not data:
        raise DecodeError("empty input: 0 bytes")
    if len(data) > config.max_bytes:
        raise DecodeError(f"input too large: {len(data)} bytes > decode.max_bytes={config.max_bytes}")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError(f"unrecognised image format (first bytes {data[:8]!r})") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"too many pixels (limit decode.max_pixels={config.max_pixels}): {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise _corrupt("header", exc) from None
    if image.format not in SUPPORTED_FORMATS:
        raise DecodeError(f"unsupported image format {image.format!r} (supported: {sorted(SUPPORTED_FORMATS)})")
    width, height = image.size
    if width < 1 or height < 1:
        raise DecodeError(f"image has no pixels: {width}x{height}")
    if width * height > config.max_pixels:
        raise DecodeError(
            f"too many pixels: {width}x{height} = {width * height} > decode.max_pixels={config.max_pixels}"
        )
    if config.draft and image.format in ("JPEG", "MPO"):
        # The JPEG decoder can scale by 1/2, 1/4 or 1/8 for free; it keeps both sides >= the requested size.
        image.draft(None, (size, size))
    try:
        image.load()
        oriented: Image.Image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as exc:
        raise _corrupt(image.format, exc) from None
    return to_rgb(oriented)


def _corrupt(where: str | None, exc: BaseException) -> DecodeError:
    message = str(exc) or type(exc).__name__
    lowered = message.lower()
    truncated = ("truncated", "premature end", "broken data stream", "truncated file read")
    if isinstance(exc, EOFError) or any(marker in lowered for marker in truncated):
        return DecodeError(f"truncated image data ({where}): {message}")
    return DecodeError(f"corrupt image data ({where}): {message}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent pixels are composited over white."""
    mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I") and array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8), mode="L")
        mode = "L"
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return image.convert("RGB")
    return image


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shortest side to ``size`` (bicubic) and centre-crop a ``size`` x ``size`` square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` float32 tensor in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


@dataclass(frozen=True)
class DecodedBatch:
    """Result of decoding a batch: the images that decoded, and an error for each one that did not."""

    pixels: torch.Tensor
    """``[n_ok, 3, size, size]`` float32 in [0, 1]."""
    indices: tuple[int, ...]
    """Position in the input sequence of each row of ``pixels``."""
    errors: dict[int, DecodeError] = field(default_factory=dict)
    """Input position -> why it failed."""


class ImageDecoder:
    """Decodes batches of encoded images in parallel threads.

    Create one per worker and reuse it; :meth:`close` stops the threads.
    """

    def __init__(self, *, size: int, config: DecodeConfig | None = None) -> None:
        self.size = size
        self.config = config or DecodeConfig()
        workers = self.config.workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="decode") if workers > 1 else None

    def _decode_one(self, data: bytes) -> torch.Tensor | DecodeError:
        try:
            return decode_image(data, size=self.size, config=self.config)
        except DecodeError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a codec bug must not take the batch down; it is reported per input
            return DecodeError(f"decoder failed: {type(exc).__name__}: {exc}")

    def decode(self, items: Sequence[bytes]) -> DecodedBatch:
        results = list(self._pool.map(self._decode_one, items)) if self._pool else [self._decode_one(b) for b in items]
        tensors = {i: r for i, r in enumerate(results) if isinstance(r, torch.Tensor)}
        errors = {i: r for i, r in enumerate(results) if isinstance(r, DecodeError)}
        if tensors:
            pixels = torch.stack(list(tensors.values()))
        else:
            pixels = torch.empty((0, 3, self.size, self.size))
        return DecodedBatch(pixels=pixels, indices=tuple(tensors), errors=errors)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> ImageDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
