"""A real quarantine dataset for the console's tests: the tiny CLIP model moderates a small input Parquet file
through the pipeline's own worker and Parquet sink (no Ray), with an audit sample that sends chosen ids to review."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import uvicorn
from PIL import Image

from cola_moderation.connectors.parquet.sink import ParquetSink
from cola_moderation.connectors.parquet.source import ParquetSource
from cola_moderation.operators.policy import audit_sampled
from cola_moderation.pipeline.runtime.config import PipelineConfig, parse_config
from cola_moderation.pipeline.runtime.records import OutputSerializer
from cola_moderation.pipeline.runtime.worker import ModerationWorker

SALT = "review-tests"
SHARE = 0.5
HOSTILE = '<script>window.__pwned=1</script>"\'&<img src=x onerror="window.__pwned=2">'
HOSTILE_CAPTION = '<img src=x onerror="window.__pwned=3"><script>window.__pwned=4</script>'
LABELS = ["cat", "dog", "car"]


def config_dict(model_dir: Path) -> dict[str, Any]:
    return {
        "model": {"path": str(model_dir), "device": "cpu"},
        "taxonomy": {"labels": LABELS, "templates": ["a photo of a {}."], "top_k": 3},
        "method": "clip",
        "detector": {"enabled": False},  # the random tiny model's detector scores are meaningless
        "policy": {"version": "review-test-1", "rules": {"car": {"block": 0.999}}, "audit_sample": SHARE,
                   "audit_salt": SALT},
    }


def sampled(record_id: str) -> bool:
    return audit_sampled(record_id, share=SHARE, salt=SALT)


def hostile_id() -> str:
    """A ``<script>`` id that the audit sample sends to review."""
    return next(f"{HOSTILE}{n}" for n in range(1000) if sampled(f"{HOSTILE}{n}"))


def png(seed: int, side: int = 40) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class ReviewData:
    config: PipelineConfig
    config_path: Path
    input_file: Path
    output_dir: Path
    quarantined: list[str]
    allowed: list[str]


def make_review_data(root: Path, model_dir: Path, *, quarantined: int = 5) -> ReviewData:
    """Input Parquet + the ``cola batch``-shaped output dataset of moderating it (``quarantined`` audit-sampled ids
    plus the hostile one in quarantine, three ids in the output route)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    in_sample = [f"upload-{n}" for n in range(200) if sampled(f"upload-{n}")][:quarantined]
    out_sample = [f"upload-{n}" for n in range(200) if not sampled(f"upload-{n}")][:3]
    ids = [in_sample[0], hostile_id(), *in_sample[1:], *out_sample]
    captions = [HOSTILE_CAPTION if i == 1 else f"caption {i}" for i in range(len(ids))]
    input_file = root / "uploads.parquet"
    pq.write_table(pa.table({"id": ids, "image": [png(i) for i in range(len(ids))], "caption": captions,
                             "uploader": [f"user-{i}" for i in range(len(ids))]}), input_file)
    config_path = root / "review.yaml"
    config_path.write_text(yaml.safe_dump(config_dict(model_dir)))
    config = parse_config(config_dict(model_dir))
    output_dir = root / "moderated"
    worker = ModerationWorker(config)
    with ParquetSource(input_file, config.parquet) as source:
        sink = ParquetSink(output_dir, OutputSerializer(), config.parquet, passthrough=source.passthrough_schema())
        while (batch := source.poll()) is not None:
            for outcome in worker.process(batch.records).outcomes:
                sink.add_outcome(outcome)
            sink.flush(batch)
        sink.close()
    worker.close()
    return ReviewData(config, config_path, input_file, output_dir, [i for i in ids if sampled(i)],
                      [i for i in ids if not sampled(i)])


class ServerThread:
    """uvicorn serving an ASGI app on 127.0.0.1 in a thread of the test process."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        sockets = self.server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
