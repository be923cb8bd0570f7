"""The batch job's read and decode stages import no ``torch`` (their worker processes start ~1 s sooner, CPU the model
actor's start-up needs), and decode exactly what the in-process decoder does."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.filesystem import expand
from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.decode import ImageDecoder
from cola_moderation.pipeline.jobs.batch_stages import decode_rows, read_and_decode, read_file

REPO = Path(__file__).resolve().parents[3]


def _png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def _gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=[100, 300, 100], loop=0)
    return buffer.getvalue()


def _input(tmp_path: Path) -> Path:
    path = tmp_path / "in.parquet"
    images = [_png((200, 10, 10)), b"not an image", None, _gif(), _png((10, 200, 10), (64, 20))]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(images))], "image": images,
                             "note": [f"n{i}" for i in range(len(images))]}), path)
    return path


def _stages(path: Path, size: int) -> pa.Table:
    files = expand(str(path))
    passthrough = pa.schema([pa.field("note", pa.string())])
    config = ParquetConfig()
    tables = list(read_file(pa.table({"index": [0]}), files=files, passthrough=passthrough, config=config,
                            done=frozenset(), max_image_bytes=DecodeConfig().max_bytes))
    return pa.concat_tables([decode_rows(t, size=size, config=DecodeConfig()) for t in tables])


def test_decode_stage_matches_the_in_process_decoder(tmp_path: Path) -> None:
    path = _input(tmp_path)
    out = _stages(path, size=28)
    payloads = pq.read_table(path).column("image").to_pylist()
    expected = ImageDecoder(size=28).decode([p for p in payloads if p is not None], uint8=True)
    decoded_rows = [i for i, e in enumerate(out.column("decode_error").to_pylist())
                    if e is None and out.column("error_class")[i].as_py() is None]
    assert decoded_rows == [0, 3, 4]  # the bad bytes fail decoding; the null image fails in the source
    pixels = out.column("pixels").combine_chunks().to_numpy()
    first_frames = [expected.indices.index(k) for k in (0, 2, 3)]  # positions among the non-null payloads
    assert np.array_equal(pixels[decoded_rows], expected.pixels.numpy()[first_frames])
    assert out.column("frame_count").to_pylist()[3] == expected.frame_counts[2]
    assert out.column("passthrough:note").to_pylist() == [f"n{i}" for i in range(5)]


def test_read_and_decode_stages_do_not_import_torch(tmp_path: Path) -> None:
    path = _input(tmp_path)
    code = ("import json, sys; from pathlib import Path; from tests.pipeline.jobs.test_batch_stages import _stages; "
            f"out = _stages(Path({str(path)!r}), size=28); "
            "print(json.dumps([out.num_rows, sorted(m for m in ('torch', 'transformers') if m in sys.modules)]))")
    # A fresh interpreter: what a Ray worker process running only these stages imports.
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [5, []]


def test_the_fused_read_and_decode_stage_gives_the_separate_stages_rows(tmp_path: Path) -> None:
    path = _input(tmp_path)
    read = partial(read_file, files=expand(str(path)), passthrough=pa.schema([pa.field("note", pa.string())]),
                   config=ParquetConfig(), done=frozenset(), max_image_bytes=DecodeConfig().max_bytes)
    decode = partial(decode_rows, size=28, config=DecodeConfig())
    parts = list(read_and_decode(pa.table({"index": [0]}), read=read, decode=decode, batch_rows=2))
    assert [t.num_rows for t in parts] == [2, 2, 1]  # decoded batch_rows at a time
    assert pa.concat_tables(parts).equals(_stages(path, size=28))
