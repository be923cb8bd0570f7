"""Cost of the matching stage: per-image PDQ lookup at 10^4 / 10^5 / 10^6 banked hashes (the index alone and the
whole Matcher.match call, batches of 1 and 32), index build time and memory, and the saving of
``matching.skip_model_on_match`` on a batch of banked images (the worker end to end, reference model).

    python benchmarks/matching_cost.py [--sizes 10000,100000,1000000] [--queries 512] [--skip-batch 256]

Banked hashes are uniform random 256-bit values plus the real PDQ hashes of Fashion-MNIST test images; queries are
those images' JPEG q75 re-encodes (hits) and other test images (misses), half each. One thread, as in a worker.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: F401 - offline environment for transformers
from cola_moderation.connectors.records import FilePosition, InputRecord
from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.decode import open_image
from cola_moderation.operators.matching.banks import Bank
from cola_moderation.operators.matching.config import BankConfig, MatchingConfig
from cola_moderation.operators.matching.index import PdqIndex
from cola_moderation.operators.matching.matcher import Matcher
from cola_moderation.operators.matching.signals import Hasher, ImageHashes, hex_to_words
from cola_moderation.pipeline.research.fashion_mnist import load_fashion_mnist
from cola_moderation.pipeline.runtime.config import parse_config
from cola_moderation.pipeline.runtime.worker import ModerationWorker
from cola_moderation.resources import config_path


def encoded(array: np.ndarray, fmt: str = "PNG", **options: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def hashes_of(payloads: list[bytes]) -> list[ImageHashes]:
    hasher = Hasher()
    return [hasher(data, open_image(data, size=28, config=DecodeConfig())) for data in payloads]


def per_image_ms(run, queries: int, batch: int) -> float:  # type: ignore[no-untyped-def]
    for start in range(0, min(queries, 4 * batch), batch):  # warm up
        run(start, start + batch)
    started = time.perf_counter()
    for start in range(0, queries, batch):
        run(start, start + batch)
    return (time.perf_counter() - started) / queries * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--skip-batch", type=int, default=256)
    parser.add_argument("--methods", default="clip,cascade")
    args = parser.parse_args()
    torch.set_num_threads(1)
    test = load_fashion_mnist("test").images.numpy()
    half = args.queries // 2
    banked_images = test[:half]
    banked = hashes_of([encoded(a) for a in banked_images])
    queries = hashes_of([encoded(a, "JPEG", quality=75) for a in banked_images]) + hashes_of(
        [encoded(a) for a in test[5000 : 5000 + half]])
    words = hex_to_words([q.pdq for q in queries if q.pdq])
    rng = np.random.default_rng(0)
    for size in (int(s) for s in args.sizes.split(",")):
        random = [f"{v:064x}" for v in (int.from_bytes(rng.bytes(32), "big") for _ in range(size - half))]
        pdq = [h.pdq for h in banked if h.pdq] + random
        started = time.perf_counter()
        bank = Bank(name="bench", config=BankConfig(path="-", action="block"), uri="-", pdq_hex=pdq,
                    pdq_labels=[None] * len(pdq), pdq_words=hex_to_words(pdq))
        matcher = Matcher(MatchingConfig(banks={"bench": BankConfig(path="-")}), [bank])
        build = time.perf_counter() - started
        index: PdqIndex = matcher.index
        memory = index.words.nbytes + (index._order.nbytes + index._offsets.nbytes if index._order is not None else 0)
        row = {"banked_pdq": size, "build_s": round(build, 2), "index_mb": round(memory / 2**20, 1)}
        for batch in (1, 32):
            row[f"index_ms_per_image_b{batch}"] = round(per_image_ms(
                lambda a, b, index=index: index.nearest(words[a:b], 31), len(words), batch), 4)
            row[f"match_ms_per_image_b{batch}"] = round(per_image_ms(
                lambda a, b, matcher=matcher: matcher.match(queries[a:b]), len(queries), batch), 4)
        hits = sum(m is not None for m in matcher.match(queries))
        row["hits"] = f"{hits}/{len(queries)}"
        print(json.dumps(row), flush=True)

    # skip_model_on_match: the worker on a batch of banked images, model skipped vs run.
    payloads = [encoded(a) for a in test[: args.skip_batch]]
    with tempfile.TemporaryDirectory() as tmp:
        bank_file = Path(tmp) / "bank.csv"
        rows = ["signal_type,hash,label"] + [f"pdq,{h.pdq},known" for h in hashes_of(payloads)]
        bank_file.write_text("\n".join(rows) + "\n")
        records = [InputRecord(f"r{i}", data, {}, FilePosition("bench", i)) for i, data in enumerate(payloads)]
        import yaml

        for method in args.methods.split(","):
            timings = {}
            for skip in (False, True):
                data = yaml.safe_load(config_path("reference").read_text())
                data.update({"method": method, "model": {**data["model"], "device": "cpu"},
                             "matching": {"banks": {"known": {"path": str(bank_file), "action": "block"}},
                                          "skip_model_on_match": skip}})
                worker = ModerationWorker(parse_config(data, base_dir=config_path("reference").parent))
                worker.process(records[:16])  # warm up
                started = time.perf_counter()
                for _ in range(3):
                    result = worker.process(records)
                timings[skip] = (time.perf_counter() - started) / 3
                assert all(r.record.match is not None for r in result.routed)
                worker.close()
            print(json.dumps({"skip_model_on_match": method, "images": len(records),
                              "model_run_s": round(timings[False], 3), "model_skipped_s": round(timings[True], 3),
                              "ratio": round(timings[False] / timings[True], 1)}), flush=True)


if __name__ == "__main__":
    main()
