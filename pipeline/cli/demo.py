"""``cola demo``: the embedded default. Runs the real pipeline offline on the bundled sample with the reference
model and reports what it did, including how the labels compare with the sample's ground truth.

* batch (default): ``cola batch`` on the bundled ``samples/sample.parquet`` into a fresh output directory.
* ``--stream``: starts the embedded broker, produces the sample to an input topic, runs ``cola stream`` until the
  topic is drained, and reads the output topics back.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cola_moderation.resources import sample_parquet

if TYPE_CHECKING:
    from cola_moderation.connectors.local.kafka_tools import Message

DEFAULT_CONFIG = "reference"
"""The bundled reference config, by name (:func:`cola_moderation.resources.config_path`)."""
SAMPLE = sample_parquet()


def ground_truth_report(rows: Iterable[Mapping[str, Any]]) -> str:
    """Accuracy on clean sample rows (``true_label`` passthrough) and the flag rate on attacked copies."""
    clean_total = clean_correct = attacked_total = attacked_flagged = attacked_correct = clean_flagged = 0
    for row in rows:
        truth = row.get("true_label")
        if truth is None or truth != truth:  # missing or NaN
            continue
        if row.get("attacked"):
            attacked_total += 1
            attacked_flagged += bool(row["suspected_adversarial"])
            attacked_correct += row["label"] == truth
        else:
            clean_total += 1
            clean_correct += row["label"] == truth
            clean_flagged += bool(row["suspected_adversarial"])
    lines = ["ground truth (sample columns true_label / attacked):"]
    if clean_total:
        lines.append(f"  clean images:    {clean_correct}/{clean_total} labelled correctly "
                     f"({100 * clean_correct / clean_total:.1f}%), {clean_flagged} flagged as adversarial")
    if attacked_total:
        lines.append(f"  attacked copies: {attacked_flagged}/{attacked_total} flagged "
                     f"({100 * attacked_flagged / attacked_total:.1f}%), {attacked_correct} still labelled correctly")
    return "\n".join(lines)


def run_batch_demo(config_path: str | Path = DEFAULT_CONFIG, *, output: Path | None = None) -> str:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from cola_moderation.pipeline.jobs.batch import run_batch_job
    from cola_moderation.pipeline.runtime.config import load_config

    config = load_config(config_path)
    output = output or Path(tempfile.mkdtemp(prefix="cola-demo-"))
    summary = run_batch_job(config, inputs=str(SAMPLE), output=output)
    table = ds.dataset(output, partitioning="hive").to_table()  # one dataset: route=output|quarantine|dead_letter
    rows = table.filter(pc.not_equal(table.column("route"), "dead_letter")).to_pylist()
    return "\n".join([summary.table(f"cola demo (batch job) -> {output}"), ground_truth_report(rows)])


def sample_messages(path: Path = SAMPLE) -> list[Message]:
    """The sample Parquet as raw-format Kafka messages: key = id, value = image bytes, other columns as headers."""
    import pyarrow.parquet as pq

    messages: list[Message] = []
    for row in pq.read_table(path).to_pylist():
        headers = [(name, str(value).encode()) for name, value in row.items()
                   if name not in ("id", "image") and value is not None]
        messages.append((str(row["id"]).encode(), row["image"] or b"", headers))
    return messages


def run_stream_demo(config_path: str | Path = DEFAULT_CONFIG) -> str:
    import json

    from cola_moderation.connectors.kafka.admin import ensure_topics
    from cola_moderation.connectors.local.broker import EmbeddedBroker
    from cola_moderation.connectors.local.kafka_tools import produce, read_topic
    from cola_moderation.pipeline.jobs.stream import run_stream_job
    from cola_moderation.pipeline.runtime.config import load_config

    config = load_config(config_path)
    kafka = config.kafka
    messages = sample_messages()
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        ensure_topics(bootstrap, {kafka.input_topics[0]: 2, kafka.output_topic: 1, kafka.quarantine_topic: 1,
                                  kafka.dead_letter_topic: 1})
        produce(bootstrap, kafka.input_topics[0], messages)
        summary = run_stream_job(config, bootstrap_servers=bootstrap, idle_timeout_s=5.0)
        written = summary.routes["output"] + summary.routes["quarantine"]
        rows = []
        for topic, expect in ((kafka.output_topic, summary.routes["output"]),
                              (kafka.quarantine_topic, summary.routes["quarantine"])):
            for message in read_topic(bootstrap, topic, expect=expect, idle_s=0.5):
                record = json.loads(message.value)
                headers = record["metadata"].get("headers", {})
                rows.append({**record, "true_label": headers.get("true_label"),
                             "attacked": headers.get("attacked") == "True"})
    lines = [summary.table(f"cola demo --stream ({len(messages)} messages via the embedded broker at {bootstrap})"),
             ground_truth_report(rows)]
    if written != len(rows):
        lines.append(f"WARNING: the job reported {written} records but {len(rows)} were read back")
    return "\n".join(lines)
