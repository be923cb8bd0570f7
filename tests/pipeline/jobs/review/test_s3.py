"""The console's queue and decisions on object storage: a real S3-compatible server (moto, loopback) through
pyarrow's S3 filesystem, as ``cola review s3://bucket/moderated --decisions s3://bucket/decisions`` uses them."""

from __future__ import annotations

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from cola_moderation.pipeline.jobs.review.decision_log import DecisionLog, ParquetDecisions
from cola_moderation.pipeline.jobs.review.items import ParquetItems
from tests.connectors.parquet.test_s3 import BUCKET, s3  # noqa: F401 - the moto server fixture
from tests.pipeline.jobs.review.data import ReviewData


def test_queue_and_decisions_on_s3(s3: pafs.S3FileSystem, review_data: ReviewData) -> None:  # noqa: F811
    pafs.copy_files(str(review_data.output_dir), f"{BUCKET}/review/moderated",
                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    items = ParquetItems(f"s3://{BUCKET}/review/moderated", parquet=review_data.config.parquet,
                         decode=review_data.config.decode)
    assert [item.record.id for item in items.items()] == review_data.quarantined
    assert items.image_png(items.items()[0]).startswith(b"\x89PNG")
    log = DecisionLog([ParquetDecisions(f"s3://{BUCKET}/review/decisions")])
    made = log.decide(items.items()[0].record, reviewer="erin", decision="confirm",
                      final_label=items.items()[0].record.label, note="")
    table = pads.dataset(f"{BUCKET}/review/decisions", filesystem=s3, partitioning="hive").to_table()
    assert table.column("decision_id").to_pylist() == [made.record.decision_id]
    assert table.column("route").to_pylist() == ["decisions"]
    reloaded = DecisionLog([ParquetDecisions(f"s3://{BUCKET}/review/decisions")])
    assert reloaded.load() == 1 and reloaded.history(made.record.id)[0] == made.record
