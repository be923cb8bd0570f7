"""How the review console scales with the queue: load time, listing latency and decision latency.

    cd REPO && python benchmarks/review_console.py [--items 10000] [--decisions 50]

Writes a synthetic ``cola batch`` output dataset (``--items`` quarantined records, real OutputRecords through the
ParquetSink; images are small PNGs in an input Parquet file the records point at), opens the console on it (uvicorn
in this process), and times: loading the quarantine, ``GET /api/items?status=all`` (median of 5), ``GET
/api/items/{id}/image`` (median of 20), and ``POST .../decision`` (median over ``--decisions``, one Parquet file
each). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cola_moderation.connectors.config import ParquetConfig  # noqa: E402
from cola_moderation.connectors.parquet.sink import ParquetSink  # noqa: E402
from cola_moderation.connectors.records import Batch, FilePosition, Route  # noqa: E402
from cola_moderation.operators.config import DecodeConfig  # noqa: E402
from cola_moderation.pipeline.jobs.review.app import ReviewConsole, build_app  # noqa: E402
from cola_moderation.pipeline.jobs.review.auth import Authenticator  # noqa: E402
from cola_moderation.pipeline.jobs.review.decision_log import DecisionLog, ParquetDecisions  # noqa: E402
from cola_moderation.pipeline.jobs.review.items import ParquetItems  # noqa: E402
from cola_moderation.pipeline.runtime.records import OutputRecord, OutputSerializer  # noqa: E402
from tests.pipeline.jobs.review.data import ServerThread  # noqa: E402

TOKEN = "benchmark-token-0123456789"


def write_dataset(root: Path, items: int) -> Path:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(min(items, 256)):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    source = root / "uploads.parquet"
    pq.write_table(pa.table({"image": [images[i % len(images)] for i in range(items)]}), source)
    sink = ParquetSink(root / "out", OutputSerializer(), ParquetConfig(), passthrough=pa.schema([("uploader",
                                                                                                   pa.string())]))
    now = datetime.now(UTC)
    for start in range(0, items, 1000):
        for i in range(start, min(items, start + 1000)):
            sink.add(Route.QUARANTINE, OutputRecord(
                id=f"upload-{i:06d}", label="weapons", score=0.6, topk=(("weapons", 0.6), ("safe", 0.4)),
                action="review", adversarial_score=0.1, suspected_adversarial=False, method="cascade", model="m",
                policy_version="bench", source=FilePosition(str(source), i), processed_at=now, latency_ms=1.0,
                metadata={"uploader": f"user-{i % 97}"}, review_reasons=("band:weapons:[0.4,0.8)",)))
        sink.flush(Batch(key=f"b{start}", records=()))
    sink.close()
    return root / "out"


def timed(call: object, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--decisions", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        output = write_dataset(root, args.items)
        started = time.perf_counter()
        items = ParquetItems(output, parquet=ParquetConfig(), decode=DecodeConfig())
        load_s = time.perf_counter() - started
        log = DecisionLog([ParquetDecisions(root / "decisions")])
        app = build_app(ReviewConsole(items=items, decisions=log, labels=("weapons", "safe"),
                                      auth=Authenticator({TOKEN: "bench"})))
        with ServerThread(app) as server:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            headers = {"Authorization": f"Bearer {TOKEN}"}

            def get(path: str) -> bytes:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                body = response.read()
                assert response.status == 200, (path, response.status)
                return body

            csrf = json.loads(get("/api/session"))["csrf"]
            listing_ms = timed(lambda: get("/api/items?status=all"), 5)
            ids = [f"upload-{i:06d}" for i in range(0, args.items, max(1, args.items // 20))]
            image_times = []
            for record_id in ids:
                image_times.append(timed(lambda rid=record_id: get(f"/api/items/{quote(rid)}/image"), 1))
            decision_times = []
            for i in range(args.decisions):
                body = json.dumps({"decision": "confirm"}).encode()
                started = time.perf_counter()
                connection.request("POST", f"/api/items/upload-{i:06d}/decision", body=body,
                                   headers={**headers, "X-CSRF-Token": csrf, "Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                assert response.status == 201
                decision_times.append((time.perf_counter() - started) * 1000)
            connection.close()
        print(json.dumps({"items": args.items, "load_s": round(load_s, 2), "list_all_ms": round(listing_ms, 1),
                          "image_ms_median": round(statistics.median(image_times), 1),
                          "decision_ms_median": round(statistics.median(decision_times), 1),
                          "decisions": args.decisions}))


if __name__ == "__main__":
    main()
