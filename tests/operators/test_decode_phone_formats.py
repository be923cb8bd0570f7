"""Phone formats: HEIC / HEIF (pillow-heif) and AVIF (Pillow's plugin) decode with their EXIF orientation applied,
under the same size and pixel limits as every other format."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.decode import ImageDecoder, open_image, register_heif
from cola_moderation.operators.errors import DecodeError

FORMATS = ("HEIF", "AVIF")
ROTATE_90_CW = 6  # EXIF orientation: the stored pixels are shown turned 90 degrees clockwise


def two_colour(width: int = 80, height: int = 40) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (width // 2, 0, width, height))
    return image


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    register_heif()
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=90, **kwargs)
    return buffer.getvalue()


def near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


@pytest.mark.parametrize("fmt", FORMATS)
def test_phone_format_decodes_with_exif_orientation(fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90_CW
    data = encode(two_colour(), fmt, exif=exif.tobytes())
    image = open_image(data, size=16, config=DecodeConfig())
    assert image.mode == "RGB" and image.size == (40, 80)  # turned upright: portrait
    # turned clockwise, the left (red) half is on top
    assert near(image.getpixel((20, 10)), (255, 0, 0)) and near(image.getpixel((20, 70)), (0, 0, 255))
    decoded = ImageDecoder(size=16, config=DecodeConfig(workers=1)).decode([data])
    assert decoded.errors == {} and decoded.pixels.shape == (1, 3, 16, 16)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_phone_format_is_a_decode_error(fmt: str, keep: float) -> None:
    data = encode(Image.effect_noise((96, 96), 60).convert("RGB"), fmt)
    with pytest.raises(DecodeError):
        open_image(data[: int(len(data) * keep)], size=16, config=DecodeConfig())


@pytest.mark.parametrize("fmt", FORMATS)
def test_phone_format_decompression_bomb_is_refused_from_its_header(fmt: str) -> None:
    data = encode(Image.new("RGB", (1200, 1000), (10, 20, 30)), fmt)  # a few hundred bytes declaring 1.2 MP
    assert len(data) < 20_000
    with pytest.raises(DecodeError, match="too many pixels: 1200x1000"):
        open_image(data, size=16, config=DecodeConfig(max_pixels=1_000_000))
    with pytest.raises(DecodeError, match="input too large"):
        open_image(data, size=16, config=DecodeConfig(max_bytes=len(data) - 1))
