"""Image bytes -> RGB float tensors at the model's input size.

Decoding is defensive: the header is read first and images declaring more than ``max_pixels`` are refused before any
pixel buffer is allocated. Every failure raises :class:`~cola_moderation.operators.errors.DecodeError` with a specific
message; callers turn it into a dead-letter record or an error line.

Geometry follows CLIP's image processor: resize the shortest side to ``size`` (bicubic), centre-crop ``size`` x
``size``. Pixels come out in [0, 1]; the mean/std normalisation happens inside the backbone, so attacks and
augmentations work in pixel space.

Memory budget: an image much larger than the target is box-reduced by an integer factor right after decoding (the
same first step Pillow's ``resize(reducing_gap=3)`` takes, done before mode conversions and alpha compositing so they
run on the small image); 16-bit and float images are reduced in integer / float32 arithmetic on their own buffer (no
float64 copies). A decoded image costs about its raw size (2 bytes per pixel for 16-bit grey) plus one copy, and an
:class:`ImageDecoder` lets at most ``decode.max_concurrent_pixels`` pixels be decoding at once (:class:`PixelBudget`),
so N large images in one worker wait for each other instead of multiplying the peak.

``torch`` is imported only where tensors are made (:meth:`ImageDecoder.decode`, :func:`decode_image`): the batch job's
decode tasks use :meth:`ImageDecoder.decode_arrays` and never import it (a worker process saves ~1 s of CPU).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.errors import DecodeError
from cola_moderation.operators.frames import ANIMATED_FORMATS, sample_frames, webp_durations

if TYPE_CHECKING:
    import torch

SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF"})
"""Pillow format names accepted. HEIF (HEIC, the iPhone default) decodes through ``pillow-heif``, which applies the
EXIF orientation itself; AVIF through Pillow's own plugin (Pillow >= 11.2 built with libavif)."""
REDUCING_GAP = 3
"""Images at least this many times the target size (shortest side) are box-reduced right after decoding."""
_REDUCIBLE = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"})
_HIGH_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class PixelBudget:
    """At most ``limit`` pixels decoding at once across the threads sharing this budget; one image larger than the
    limit may still decode, alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self.in_use == 0 or self.in_use + pixels <= self.limit)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


def decode_image(data: bytes, *, size: int, config: DecodeConfig | None = None,
                 budget: PixelBudget | None = None) -> torch.Tensor:
    """Decode one encoded image into a ``[3, size, size]`` float32 tensor in [0, 1]; ``budget`` bounds the pixels
    decoding at once in this worker."""
    image = open_image(data, size=size, config=config or DecodeConfig(), budget=budget)
    return to_tensor(resize_center_crop(image, size))


_HEIF_REGISTERED = False


def register_heif() -> None:
    """Let Pillow open HEIF / HEIC through ``pillow-heif`` (once per process, on first use: importing it loads
    libheif)."""
    global _HEIF_REGISTERED
    if not _HEIF_REGISTERED:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:  # pragma: no cover - a dependency; without it HEIC stays "unrecognised"
            _HEIF_REGISTERED = True
            return
        register_heif_opener(thumbnails=False)
        _HEIF_REGISTERED = True


def open_image(data: bytes, *, size: int, config: DecodeConfig, budget: PixelBudget | None = None) -> Image.Image:
    """Validate and fully decode ``data`` into an RGB PIL image (EXIF orientation applied, not yet resized; box-reduced
    by an integer factor when at least ``REDUCING_GAP`` times ``size``). Animated images: the first frame (see
    :func:`decode_frames` for the sampled frames)."""
    image = _open_checked(data, size=size, config=config)
    width, height = image.size
    with budget.hold(width * height) if budget is not None else nullcontext():
        return _finish(image, size)


def _open_checked(data: bytes, *, size: int, config: DecodeConfig) -> Image.Image:
    """``data`` opened (header read, no pixels yet) and checked against the byte, format and pixel limits."""
    register_heif()
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
    return image


def _finish(image: Image.Image, size: int) -> Image.Image:
    """The current frame of ``image`` decoded, box-reduced, upright (EXIF orientation) and RGB."""
    try:
        image.load()
        reduced = reduce_early(image, size)
        oriented: Image.Image = ImageOps.exif_transpose(reduced) or reduced
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as exc:
        raise _corrupt(image.format, exc) from None
    return to_rgb(oriented)


@dataclass(frozen=True)
class Frames:
    """The sampled frames of one input at the model's size: ``arrays`` (uint8 ``[3, size, size]`` each), their
    ``indices`` in the file (ascending) and the file's frame ``count`` (1 for a still image)."""

    arrays: list[np.ndarray]
    indices: tuple[int, ...]
    count: int


def decode_frames(data: bytes, *, size: int, config: DecodeConfig, budget: PixelBudget | None = None,
                  first: Callable[[Image.Image], None] | None = None) -> Frames:
    """Decode ``data`` at ``size`` x ``size``: one frame for a still image; for an animated or multi-page one the
    frames :func:`~cola_moderation.operators.frames.sample_frames` picks (``decode.max_frames``). Every frame up to
    the last sampled one is decoded (GIF and APNG frames build on the previous ones), so ``frames x width x height``
    must stay within ``decode.max_pixels``; a larger animation is refused rather than judged by part of it.
    ``first`` is called with the first frame as opened (RGB, upright, box-reduced; before the resize and crop): the
    matching stage's hook."""
    image = _open_checked(data, size=size, config=config)
    width, height = image.size
    count = int(getattr(image, "n_frames", 1) or 1) if image.format in ANIMATED_FORMATS else 1
    with budget.hold(width * height) if budget is not None else nullcontext():
        if count == 1 or config.max_frames == 1:
            finished = _finish(image, size)
            if first is not None:
                first(finished)
            return Frames([to_array(resize_center_crop(finished, size))], (0,), count)
        if count * width * height > config.max_pixels:
            raise DecodeError(f"too many pixels in the animation: {count} frames of {width}x{height} = "
                              f"{count * width * height} > decode.max_pixels={config.max_pixels}")
        return _sample(image, data, size=size, count=count, max_frames=config.max_frames, first=first)


def _sample(image: Image.Image, data: bytes, *, size: int, count: int, max_frames: int,
            first: Callable[[Image.Image], None] | None = None) -> Frames:
    """One pass over the frames in order: durations read as the frames go by; the fixed picks (first, last, evenly
    spaced) and the longest-displayed frame so far are kept at the model's size."""
    durations: list[float | None] = [None] * count
    if image.format == "WEBP":
        durations = [*(webp_durations(data) or [])][:count] + [None] * count
    fixed = set(sample_frames(count, [None] * count, max_frames))
    kept: dict[int, np.ndarray] = {}
    longest: tuple[float, int] | None = None
    for index in range(count):
        try:
            image.seek(index)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise _corrupt(f"{image.format} frame {index}", exc) from None
        raw = durations[index] if image.format == "WEBP" else image.info.get("duration")
        duration = float(raw) if isinstance(raw, (int, float)) else None
        durations[index] = duration
        is_longest = duration is not None and (longest is None or duration > longest[0])
        if index in fixed or is_longest or (index == 0 and first is not None):
            finished = _finish(image, size)
            if index == 0 and first is not None:
                first(finished)
            kept[index] = to_array(resize_center_crop(finished, size))
        if is_longest and duration is not None:
            if longest is not None and longest[1] not in fixed:
                kept.pop(longest[1], None)
            longest = (duration, index)
    chosen = sample_frames(count, durations, max_frames)
    return Frames([kept[i] for i in chosen], chosen, count)


def reduce_early(image: Image.Image, size: int) -> Image.Image:
    """Box-reduce ``image`` by the integer factor Pillow's ``resize(reducing_gap=3)`` would use first, so that the
    conversions after it work on the small image. 16-bit and float images go to 8-bit grey ("L") here."""
    factor = min(image.size) // (size * REDUCING_GAP)
    if image.mode in _HIGH_DEPTH:
        return high_depth_to_gray(image, max(1, factor))
    if factor < 2:
        return image
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    elif image.mode == "1":
        image = image.convert("L")
    return image.reduce(factor) if image.mode in _REDUCIBLE else image


def high_depth_to_gray(image: Image.Image, factor: int) -> Image.Image:
    """16-bit / 32-bit integer or float grey -> 8-bit grey, box-averaged by ``factor`` first, without float64
    copies. Integer images use the full 16-bit range when any value exceeds 255, else 0..255 (8-bit data stored
    wide); float images are taken as 0..255."""
    array = np.asarray(image)  # the image's own dtype: uint16, int32 or float32
    peak = 65535.0 if image.mode != "F" and array.max(initial=0) > 255 else 255.0
    if factor > 1:
        height, width = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
        wide = np.float32 if image.mode == "F" else np.int64
        rows = array[:height].reshape(height // factor, factor, array.shape[1]).sum(axis=1, dtype=wide)
        blocks = rows[:, :width].reshape(height // factor, width // factor, factor).sum(axis=2, dtype=wide)
        scaled = blocks.astype(np.float32)
        scaled *= np.float32(255.0 / peak / (factor * factor))
    else:
        scaled = array.astype(np.float32)
        scaled *= np.float32(255.0 / peak)
    del array
    np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(scaled, 0, 255, out=scaled)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


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
    if mode in _HIGH_DEPTH:
        image = high_depth_to_gray(image, 1)
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


def to_array(image: Image.Image) -> np.ndarray:
    """RGB PIL image -> ``[3, H, W]`` uint8 array (channels first, contiguous)."""
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` float32 tensor in [0, 1]."""
    import torch

    return torch.from_numpy(to_array(image)).float().div_(255.0)


@dataclass(frozen=True)
class DecodedBatch:
    """Result of decoding a batch: the images that decoded, and an error for each one that did not."""

    pixels: torch.Tensor
    """``[n_ok, 3, size, size]``: float32 in [0, 1], or uint8 in [0, 255] from ``decode(..., uint8=True)`` (4x
    smaller to move between processes; the moderator scales it per model batch)."""
    indices: tuple[int, ...]
    """Position in the input sequence of each row of ``pixels``."""
    errors: dict[int, DecodeError] = field(default_factory=dict)
    """Input position -> why it failed."""
    frames: tuple[int, ...] = ()
    """Frame index in its file of each row of ``pixels`` (empty: every row is a still image's only frame). An
    animated input has one row per sampled frame, adjacent, its position repeated in ``indices``."""
    frame_counts: dict[int, int] = field(default_factory=dict)
    """Input position -> frames in the file, for inputs with more than one."""
    hashes: dict[int, Any] = field(default_factory=dict)
    """Input position -> what the decoder's ``hasher`` made of it and its first frame (empty without one; see
    :mod:`cola_moderation.operators.matching`)."""


@dataclass(frozen=True)
class DecodedArrays:
    """:class:`DecodedBatch` with the pixels as a uint8 NumPy array ``[n_ok, 3, size, size]`` in [0, 255] (what
    :meth:`ImageDecoder.decode_arrays` returns; no ``torch`` needed)."""

    pixels: np.ndarray
    indices: tuple[int, ...]
    errors: dict[int, DecodeError] = field(default_factory=dict)
    frames: tuple[int, ...] = ()
    frame_counts: dict[int, int] = field(default_factory=dict)
    hashes: dict[int, Any] = field(default_factory=dict)


class ImageDecoder:
    """Decodes batches of encoded images in parallel threads.

    Create one per worker and reuse it; :meth:`close` stops the threads.
    """

    def __init__(self, *, size: int, config: DecodeConfig | None = None,
                 hasher: Callable[[bytes, Image.Image], Any] | None = None) -> None:
        """``hasher``: called with each input's bytes and its first frame as opened (RGB, oriented, before the
        model's resize and crop); its results land in :attr:`DecodedBatch.hashes` (the matching stage's signals)."""
        self.size = size
        self.hasher = hasher
        self.config = config or DecodeConfig()
        self.budget = PixelBudget(self.config.max_concurrent_pixels)
        workers = self.config.workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="decode") if workers > 1 else None

    def _decode_one(self, data: bytes) -> Frames | tuple[Frames, Any] | DecodeError:
        try:
            if self.hasher is None:
                return decode_frames(data, size=self.size, config=self.config, budget=self.budget)
            hasher, hashed = self.hasher, []
            frames = decode_frames(data, size=self.size, config=self.config, budget=self.budget,
                                   first=lambda image: hashed.append(hasher(data, image)))
            return frames, (hashed[0] if hashed else None)
        except DecodeError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a codec bug must not take the batch down; it is reported per input
            return DecodeError(f"decoder failed: {type(exc).__name__}: {exc}")

    def decode(self, items: Sequence[bytes], *, uint8: bool = False) -> DecodedBatch:
        """Decode ``items``; ``uint8=True`` keeps the pixels as bytes (``[0, 255]``) instead of floats. Animated
        inputs give one row per sampled frame (:attr:`DecodedBatch.frames`)."""
        import torch

        decoded = self.decode_arrays(items)
        pixels = torch.from_numpy(decoded.pixels)
        if not uint8:
            pixels = pixels.float().div_(255.0)
        return DecodedBatch(pixels=pixels, indices=decoded.indices, errors=decoded.errors, frames=decoded.frames,
                            frame_counts=decoded.frame_counts, hashes=decoded.hashes)

    def decode_arrays(self, items: Sequence[bytes]) -> DecodedArrays:
        """:meth:`decode` with the pixels as a uint8 NumPy array ``[n_ok, 3, size, size]`` (no ``torch``)."""
        outcomes = list(self._pool.map(self._decode_one, items)) if self._pool else [self._decode_one(b) for b in items]
        hashes = {i: r[1] for i, r in enumerate(outcomes) if isinstance(r, tuple) and r[1] is not None}
        results = [r[0] if isinstance(r, tuple) else r for r in outcomes]
        errors = {i: r for i, r in enumerate(results) if isinstance(r, DecodeError)}
        arrays: list[np.ndarray] = []
        indices: list[int] = []
        frames: list[int] = []
        counts: dict[int, int] = {}
        for position, result in enumerate(results):
            if isinstance(result, Frames):
                arrays.extend(result.arrays)
                indices.extend([position] * len(result.arrays))
                frames.extend(result.indices)
                if result.count > 1:
                    counts[position] = result.count
        pixels = np.stack(arrays) if arrays else np.empty((0, 3, self.size, self.size), dtype=np.uint8)
        return DecodedArrays(pixels=pixels, indices=tuple(indices), errors=errors,
                             frames=tuple(frames) if counts else (), frame_counts=counts, hashes=hashes)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> ImageDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
