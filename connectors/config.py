"""Config sections of the connectors: ``kafka:`` and ``parquet:`` in the pipeline YAML (frozen, unknown keys
rejected; :mod:`cola_moderation.pipeline.runtime.config` composes them)."""

from __future__ import annotations

import importlib.util
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from cola_moderation.operators.config import Section

MiB = 1024 * 1024


class KafkaConfig(Section):
    """Topics, group, batching bounds and client settings of the Kafka source and sink."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated ``host:port`` list; ``cola stream --bootstrap`` overrides it."""
    input_topics: tuple[Annotated[str, Field(min_length=1)], ...] = ("cola.input",)
    output_topic: Annotated[str, Field(min_length=1)] = "cola.output"
    quarantine_topic: Annotated[str, Field(min_length=1)] = "cola.quarantine"
    dead_letter_topic: Annotated[str, Field(min_length=1)] = "cola.dead_letter"
    decisions_topic: Annotated[str, Field(min_length=1)] = "cola.decisions"
    """Reviewers' decision records (``cola review``); read by ``cola calibrate --decisions`` and the loop's tools."""
    group_id: Annotated[str, Field(min_length=1)] = "cola-moderation"
    value_format: Literal["raw", "json"] = "raw"
    """``raw``: value = image bytes, key = id. ``json``: value = ``{"id", "image_b64", ...}``; other fields become
    metadata."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_batch_records: Annotated[int, Field(ge=1, le=100_000)] = 64
    max_batch_bytes: Annotated[int, Field(ge=1)] = 64 * MiB
    max_batch_wait_ms: Annotated[int, Field(ge=0)] = 200
    session_timeout_ms: Annotated[int, Field(ge=1000)] = 6000
    heartbeat_interval_ms: Annotated[int, Field(ge=100)] = 1500
    max_poll_interval_ms: Annotated[int, Field(ge=1000)] = 300_000
    fetch_max_bytes: Annotated[int, Field(ge=1)] = 64 * MiB
    max_partition_fetch_bytes: Annotated[int, Field(ge=1)] = 16 * MiB
    max_request_size: Annotated[int, Field(ge=1024)] = 16 * MiB
    """Largest produce request; dead letters whose original bytes do not fit are written without the bytes (header
    ``payload.dropped`` = original size)."""
    producer_retries: Annotated[int, Field(ge=0, le=100)] = 5
    linger_ms: Annotated[int, Field(ge=0)] = 5
    request_timeout_ms: Annotated[int, Field(ge=1000)] = 30_000
    flush_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """``at_least_once``: outputs are flushed (acks=all), then the input offsets committed; a crash re-delivers the
    uncommitted batches. ``exactly_once``: each batch's outputs, quarantine and dead letters and its input offsets are
    committed in one Kafka transaction, and the source reads with ``isolation_level=read_committed``; downstream
    consumers must read with ``read_committed`` too (docs/delivery.md)."""
    transactional_id_prefix: Annotated[str, Field(min_length=1)] | None = None
    """``exactly_once``: each consumer's producer has ``transactional_id`` ``<prefix>.<consumer name>`` (default
    prefix: ``group_id``), stable across restarts so a restarted consumer fences its predecessor."""
    transaction_timeout_ms: Annotated[int, Field(ge=1000)] = 60_000
    """``exactly_once``: the broker aborts a transaction left open this long (a consumer killed and not restarted
    under the same name holds back read_committed readers of its partitions until then)."""
    commit_batches: Annotated[int, Field(ge=1, le=1000)] = 1
    """Batches per commit: the stream job flushes and commits the input offsets (``exactly_once``: commits one
    transaction) once this many batches are written, or ``commit_interval_ms`` after the oldest of them was, or when
    the input goes idle. 1 (the default): every batch. More amortises a commit's round trips (a transaction's four)
    over several batches without making the model's batches bigger; the price: outputs become visible
    (read_committed) and inputs acknowledged up to that much later, and a crash or an aborted transaction re-delivers
    the whole group (docs/delivery.md)."""
    commit_interval_ms: Annotated[int, Field(ge=1)] = 1000
    """With ``commit_batches`` > 1: the longest a written batch waits for its group's commit."""
    client: Literal["kafka-python", "confluent"] = "kafka-python"
    """The Kafka client library: ``kafka-python`` (pure Python, the default) or ``confluent`` (librdkafka through
    ``confluent-kafka``, the ``confluent`` extra: ~2.5x the consumer rate on 10 KiB messages, docs/benchmarks.md).
    Same semantics for source, sink, dead letters and exactly-once."""
    client_options: dict[str, Any] = Field(default_factory=dict)
    """Passed untouched to the clients: kafka-python's names for ``client: kafka-python`` (``security_protocol``,
    ``sasl_mechanism``, ``sasl_plain_username``, ``ssl_cafile``, ...), librdkafka properties for ``client: confluent``
    (``security.protocol``, ``sasl.mechanism``, ...). They override the settings above."""

    @model_validator(mode="after")
    def _check_timing(self) -> KafkaConfig:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be at most a third of "
                             f"session_timeout_ms ({self.session_timeout_ms})")
        if len(set(self.input_topics) & {self.output_topic, self.quarantine_topic, self.dead_letter_topic}):
            raise ValueError("input_topics must not contain the output, quarantine or dead-letter topic")
        if self.client == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
            raise ValueError("client: confluent needs confluent-kafka: pip install 'cola-moderation[confluent]'")
        if self.guarantee == "exactly_once" and self.commit_batches > 1 and \
                self.commit_interval_ms * 2 > self.transaction_timeout_ms:
            raise ValueError(f"commit_interval_ms ({self.commit_interval_ms}) must be at most half of "
                             f"transaction_timeout_ms ({self.transaction_timeout_ms}): a transaction stays open that "
                             "long, plus the time its last batch takes")
        if self.guarantee == "exactly_once":
            owned = sorted(set(self.client_options) & _EXACTLY_ONCE_OWNED)
            if owned:
                raise ValueError(f"client_options {owned} conflict with guarantee: exactly_once, which sets them "
                                 "(use transactional_id_prefix / transaction_timeout_ms)")
        return self


_EXACTLY_ONCE_OWNED = {"transactional_id", "transaction_timeout_ms", "isolation_level", "enable_idempotence",
                       "enable_auto_commit", "acks", "transactional.id", "transaction.timeout.ms", "isolation.level",
                       "enable.idempotence", "enable.auto.commit"}


class ParquetConfig(Section):
    """Columns and batching of the Parquet source and sink."""

    id_column: Annotated[str, Field(min_length=1)] = "id"
    """Used when present in the input; otherwise ids are ``file:row``."""
    image_column: Annotated[str, Field(min_length=1)] = "image"
    """binary / large_binary image bytes, or string paths / ``file://`` URIs (relative paths resolve from the input
    file's directory; see ``image_roots``)."""
    image_roots: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    """Directories besides the Parquet file's own from which path-valued images may be read. A path resolving
    (symlinks followed) anywhere else, a non-regular file or one over ``decode.max_bytes`` is a dead letter naming
    the rule; remote schemes (``s3://``...) are refused. Relative roots resolve from the config file's directory."""
    batch_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 64
    max_batch_bytes: Annotated[int, Field(ge=1)] = 64 * MiB
    """Rows per batch are lowered (from the file's row-group statistics) so a batch stays near this size."""
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = "zstd"
    file_rows: Annotated[int, Field(ge=1)] = 1_000_000
    """Output files are written once they hold this many rows (or ``file_bytes``), and at the end of the job."""
    file_bytes: Annotated[int, Field(ge=1)] = 48 * MiB
    """Target output file size, measured as Arrow data in memory before compression (dead letters carry their
    image bytes, which do not compress; output rows compress several-fold)."""
    on_bad_file: Literal["skip", "fail"] = "skip"
    """An input file that is not readable Parquet (corrupt, truncated, another format) or lacks the image column:
    ``skip`` it with a warning naming the file and the reason (the summary lists it), or ``fail`` the job with that
    one line (exit code 2)."""
    on_schema_conflict: Literal["cast", "skip_file", "fail"] = "cast"
    """A passthrough column whose Arrow type differs across the input files in a way Arrow's permissive promotion
    (int32 -> int64, int -> double, null -> any) cannot join: ``cast`` it to string where every file's type casts to
    string, else treat it as ``skip_file``; ``skip_file``: the files whose type conflicts with the first file's are
    not moderated, every one of their rows is a dead letter (``SchemaConflictError``, stage ``source``) and the
    summary lists the file; ``fail`` the job with one line naming the column and files (exit code 2). The id column
    is read as a string in every file whatever its type, and never conflicts."""
