"""PDQ through pdqhash in ThreatExchange's hex convention, and its robustness on a real image."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cola_moderation.operators.matching.signals import Hasher, md5_hex, pdq_of_image


def photo() -> Image.Image:
    y, x = np.mgrid[0:96, 0:128]
    array = np.stack([(x * 2) % 256, (y * 3) % 256, ((x + y) * 5) % 256], axis=-1).astype(np.uint8)
    array[20:60, 30:90] = 255 - array[20:60, 30:90]
    return Image.fromarray(array)


def distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_pdq_hex_matches_the_threatexchange_convention() -> None:
    import pdqhash

    image = photo()
    bits, quality = pdqhash.compute(np.asarray(image))
    expected = f"{int(''.join(str(int(b)) for b in bits), 2):064x}"  # threatexchange.signal_type.pdq.pdq_hasher
    assert pdq_of_image(image) == (expected, int(quality))


def test_near_duplicates_stay_close_and_other_images_do_not() -> None:
    image = photo()
    reference, quality = pdq_of_image(image)
    assert quality >= 50
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=60)
    recoded, _ = pdq_of_image(Image.open(io.BytesIO(buffer.getvalue())))
    resized, _ = pdq_of_image(image.resize((256, 192), Image.Resampling.BICUBIC))
    other, _ = pdq_of_image(image.transpose(Image.Transpose.ROTATE_90).resize((128, 96)))
    assert distance(reference, recoded) <= 31 and distance(reference, resized) <= 31
    assert distance(reference, other) > 31


def test_hasher_md5_is_of_the_bytes() -> None:
    hashes = Hasher()(b"abc", photo())
    assert hashes.md5 == md5_hex(b"abc") == "900150983cd24fb0d6963f7d28e17f72"
    assert hashes.pdq is not None and len(hashes.pdq) == 64
    assert Hasher(pdq=False)(b"abc", photo()).pdq is None


def test_decoder_hashes_each_input_once_on_its_first_frame() -> None:
    """An animated input yields several frame rows but one set of hashes: its bytes' MD5 and its first frame's PDQ."""
    from cola_moderation.operators.config import DecodeConfig
    from cola_moderation.operators.decode import ImageDecoder

    still = photo()
    frames = [still, still.transpose(Image.Transpose.ROTATE_180), still.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    png = io.BytesIO()
    still.save(png, "PNG")
    with ImageDecoder(size=32, config=DecodeConfig(workers=1), hasher=Hasher()) as decoder:
        batch = decoder.decode([gif.getvalue(), b"broken", png.getvalue()])
    assert batch.indices.count(0) == 3 and set(batch.hashes) == {0, 2} and 1 in batch.errors
    assert batch.hashes[0].md5 == md5_hex(gif.getvalue())
    first_frame = Image.open(io.BytesIO(gif.getvalue())).convert("RGB")
    assert batch.hashes[0].pdq == pdq_of_image(first_frame)[0]
    assert distance(batch.hashes[0].pdq, batch.hashes[2].pdq) <= 31  # the GIF's first frame is the PNG, palettised
