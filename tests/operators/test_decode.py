from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.decode import ImageDecoder, decode_image, open_image, resize_center_crop
from cola_moderation.operators.errors import ColaError, DecodeError


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], axis=-1), "RGB")


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("PNG", "LA"), ("PNG", "P"), ("WEBP", "RGB"),
     ("WEBP", "RGBA"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"), ("TIFF", "CMYK"), ("JPEG", "CMYK"),
     ("JPEG", "L"), ("PNG", "1")],
)
def test_formats_and_modes_decode_to_rgb_tensor(fmt: str, mode: str) -> None:
    data = encode(gradient().convert(mode), fmt)
    pixels = decode_image(data, size=32)
    assert pixels.shape == (3, 32, 32)
    assert pixels.dtype == torch.float32
    assert 0.0 <= float(pixels.min()) <= float(pixels.max()) <= 1.0
    assert float(pixels.std()) > 0.05  # the gradient survived, not a blank image


def test_alpha_is_composited_over_white() -> None:
    image = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    pixels = decode_image(encode(image, "PNG"), size=16)
    torch.testing.assert_close(pixels, torch.ones(3, 16, 16))


def test_palette_png_with_transparency() -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (10, 0, 20, 20))
    pixels = decode_image(encode(image, "PNG", transparency=0), size=20)
    torch.testing.assert_close(pixels[:, :, :10], torch.ones(3, 20, 10))  # transparent -> white
    torch.testing.assert_close(pixels[1, :, 12:], torch.ones(20, 8))  # opaque green stays green
    torch.testing.assert_close(pixels[0, :, 12:], torch.zeros(20, 8))


def test_16_bit_grayscale_png_keeps_its_range() -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    pixels = decode_image(encode(Image.fromarray(ramp), "PNG"), size=64)
    assert float(pixels.min()) < 0.02 and float(pixels.max()) > 0.98  # not clipped to white
    torch.testing.assert_close(pixels[0], pixels[1])


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    pixels = decode_image(buffer.getvalue(), size=16)
    assert float(pixels[0].mean()) > 0.9 and float(pixels[2].mean()) < 0.1


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (60, 30), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 30, 30))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    oriented = open_image(encode(image, "JPEG", exif=exif, quality=95), size=30, config=DecodeConfig())
    assert oriented.size == (30, 60)
    top, bottom = np.asarray(oriented)[:30].mean(), np.asarray(oriented)[30:].mean()
    assert top > 200 and bottom < 50  # the white half is now on top


def test_jpeg_draft_mode_decodes_at_reduced_scale() -> None:
    data = encode(gradient(2048, 1536), "JPEG")
    drafted = open_image(data, size=224, config=DecodeConfig(draft=True))
    full = open_image(data, size=224, config=DecodeConfig(draft=False))
    assert full.size == (1024, 768)  # without draft: box-reduced by 1536 // (224 * 3) = 2 right after decoding
    assert drafted.size == (512, 384)  # 1/4 scale keeps the short side >= 224
    torch.testing.assert_close(
        decode_image(data, size=224, config=DecodeConfig(draft=True)),
        decode_image(data, size=224, config=DecodeConfig(draft=False)),
        atol=0.08, rtol=0,
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, followed by a tiny (bogus) IDAT and IEND."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_quickly_without_allocating() -> None:
    start = time.perf_counter()
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_image(png_header_only(30000, 30000), size=224)
    assert time.perf_counter() - start < 0.5


def test_pixel_limit_is_configurable() -> None:
    data = encode(gradient(100, 100), "PNG")
    with pytest.raises(DecodeError, match=r"100x100 = 10000 > decode.max_pixels=9999"):
        decode_image(data, size=32, config=DecodeConfig(max_pixels=9999))
    assert decode_image(data, size=32, config=DecodeConfig(max_pixels=10000)).shape == (3, 32, 32)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty input"),
        (b"this is not an image at all", "unrecognised image format"),
        (encode(gradient(), "JPEG")[:300], "truncated"),
        (encode(gradient(), "PNG")[:120], "truncated"),
        (encode(gradient(), "PCX"), "unsupported image format 'PCX'"),
    ],
)
def test_bad_inputs_raise_specific_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as info:
        decode_image(data, size=32)
    assert isinstance(info.value, ColaError)
    assert info.value.stage == "decode"


def test_max_bytes() -> None:
    with pytest.raises(DecodeError, match="input too large: 2000 bytes > decode.max_bytes=1000"):
        decode_image(b"\xff" * 2000, size=32, config=DecodeConfig(max_bytes=1000))


def test_resize_center_crop_matches_clip_geometry() -> None:
    cropped = resize_center_crop(gradient(400, 200), 100)
    assert cropped.size == (100, 100)
    # The shortest side was scaled to 100, so the crop is the middle half of the width.
    assert abs(np.asarray(cropped)[0, 0, 0] - 64) < 8


def test_decoder_batch_keeps_positions_and_errors() -> None:
    good = encode(gradient(), "PNG")
    with ImageDecoder(size=32, config=DecodeConfig(workers=2)) as decoder:
        batch = decoder.decode([good, b"", good, b"junk"])
    assert batch.indices == (0, 2)
    assert batch.pixels.shape == (2, 3, 32, 32)
    assert sorted(batch.errors) == [1, 3]
    assert "empty" in str(batch.errors[1])
    torch.testing.assert_close(batch.pixels[0], decode_image(good, size=32))


def test_large_16_bit_and_float_images_are_reduced_early_without_float64() -> None:
    from cola_moderation.operators.decode import high_depth_to_gray, reduce_early

    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65535, (700, 900), dtype=np.uint16)
    image = Image.open(io.BytesIO(encode(Image.fromarray(wide), "PNG")))
    image.load()
    reduced = reduce_early(image, 32)  # 700 // 96 = 7
    assert reduced.mode == "L" and reduced.size == (900 // 7, 700 // 7)
    blocks = wide[:700 // 7 * 7, :900 // 7 * 7].astype(np.float64).reshape(100, 7, 128, 7).mean(axis=(1, 3))
    expected = np.clip(np.round(blocks * 255 / 65535), 0, 255)
    np.testing.assert_allclose(np.asarray(reduced, dtype=np.float64), expected, atol=1)
    # the old full-resolution float64 path and the new one agree on the final tensor
    old = np.clip(wide.astype(np.float64) * (255 / 65535), 0, 255).astype(np.uint8)
    want = decode_image(encode(Image.fromarray(old), "PNG"), size=32)
    got = decode_image(encode(Image.fromarray(wide), "PNG"), size=32)
    torch.testing.assert_close(got, want, atol=0.03, rtol=0)
    # float images: 0..255, NaN/inf do not poison the result
    floats = np.full((40, 40), 128.0, dtype=np.float32)
    floats[0, 0], floats[0, 1] = np.nan, np.inf
    gray = high_depth_to_gray(Image.fromarray(floats, mode="F"), 1)
    assert np.asarray(gray)[5, 5] == 128 and np.asarray(gray)[0, 0] == 0 and np.asarray(gray)[0, 1] == 255


def test_pixel_budget_serialises_large_images() -> None:
    import threading
    import time

    from cola_moderation.operators.decode import PixelBudget

    budget = PixelBudget(100)
    peak = []
    lock = threading.Lock()

    def work(pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                peak.append(budget.in_use)
            time.sleep(0.02)

    threads = [threading.Thread(target=work, args=(n,)) for n in (60, 60, 60, 30, 150, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(peak) <= 150 and all(p <= 100 for p in peak if p != 150) and budget.in_use == 0


def test_uint8_decoding_is_the_float_decoding_before_scaling() -> None:
    """The batch job moves uint8 pixels between processes; the model's float input must be unchanged by that."""
    items = [encode(gradient(), "PNG"), b"broken", encode(gradient(80, 60), "JPEG", quality=90)]
    with ImageDecoder(size=32) as decoder:
        floats = decoder.decode(items)
        raw = decoder.decode(items, uint8=True)
    assert raw.pixels.dtype == torch.uint8 and raw.indices == floats.indices == (0, 2)
    assert set(raw.errors) == set(floats.errors) == {1}
    torch.testing.assert_close(raw.pixels.float().div(255.0), floats.pixels, rtol=0, atol=0)
