"""KafkaSource: a consumer-group member that yields bounded batches and commits only acknowledged ones.

* ``enable_auto_commit=False``; :meth:`commit` commits, per partition, the last offset of the batch + 1.
* Value formats: ``raw`` (value = image bytes, key = id) and ``json`` (``{"id", "image_b64", ...}``, other fields
  -> metadata). No key / no ``id`` -> ``topic:partition:offset``. Headers are kept byte-exact on the record and, as
  text, in ``metadata["headers"]``.
* A message that cannot become a record (malformed envelope, bad base64, empty value, ``NaN``/``Infinity``, nesting
  deeper than :data:`~cola_moderation.connectors.json_codec.MAX_DEPTH`, or any other exception while parsing it) is a
  dead letter in the batch (stage ``source``, :class:`~cola_moderation.connectors.errors.MalformedRecordError`); the
  stream goes on.
* Rebalance: before partitions are revoked, acknowledged-but-uncommitted offsets are committed; records of revoked
  partitions still being collected are dropped, and in-flight batches are not committed for partitions this member
  lost (their new owner re-reads them: at-least-once). Records read after a partition came back in the same poll
  are read again from the committed offset, not skipped (:mod:`~cola_moderation.connectors.kafka.membership`).
* :meth:`pause` / :meth:`resume` pause all assigned partitions (backpressure) while the group session stays alive.
* ``guarantee: exactly_once``: the consumer reads with ``isolation_level=read_committed`` and never commits offsets
  itself: :class:`~cola_moderation.connectors.kafka.transactions.TransactionalKafkaSink` commits
  :meth:`transaction_offsets` inside the batch's transaction, and :meth:`commit` only records them. After an aborted
  transaction, :meth:`rewind` seeks back to the committed offsets; batches polled before it are stale.
* Compressed batches (gzip, snappy, lz4, zstd) are decompressed by kafka-python; one it cannot decompress stops the
  source with :class:`~cola_moderation.connectors.kafka.codecs.UnsupportedCompressionError` (codec, topic,
  partition, offset; nothing of that poll is committed) instead of failing on the same offset at every restart.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import KafkaError, UnsupportedCodecError
from kafka.structs import OffsetAndMetadata

from cola_moderation.connectors.base import Source
from cola_moderation.connectors.config import KafkaConfig
from cola_moderation.connectors.errors import MalformedRecordError
from cola_moderation.connectors.json_codec import JsonInputError, loads_strict
from cola_moderation.connectors.kafka.codecs import compression_error
from cola_moderation.connectors.kafka.membership import Collected, GroupMember, Positions, assemble_batch
from cola_moderation.connectors.records import Batch, DeadLetter, InputRecord, KafkaPosition

log = logging.getLogger(__name__)

__all__ = ["KafkaSource", "Positions", "decode_headers", "headers_as_text", "message_to_record", "record_of"]


def decode_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> tuple[tuple[str, bytes], ...]:
    if not headers:  # most messages: no generator to build
        return ()
    return tuple((str(key), bytes(value or b"")) for key, value in headers)


def headers_as_text(headers: tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    """Headers as JSON-able text (undecodable bytes become U+FFFD; last value wins for repeated keys)."""
    return {key: value.decode("utf-8", "replace") for key, value in headers}


def message_to_record(message: Any, value_format: str) -> InputRecord | DeadLetter:
    """Turn one kafka-python ``ConsumerRecord`` into an :class:`InputRecord`, or a source-stage :class:`DeadLetter`."""
    return record_of(message.topic, message.partition, message.offset, message.key, message.value, message.headers,
                     value_format)


def record_of(topic: str, partition: int, offset: int, raw_key: bytes | None, raw_value: bytes | None,
              raw_headers: Iterable[tuple[str, bytes | None]] | None, value_format: str) -> InputRecord | DeadLetter:
    """One Kafka message, given field by field (each client reads its own message type), as an
    :class:`InputRecord` or a source-stage :class:`DeadLetter`."""
    position = KafkaPosition(topic, partition, offset)
    headers = decode_headers(raw_headers)
    key = raw_key.decode("utf-8", "backslashreplace") if raw_key else None
    metadata: dict[str, Any] = {"headers": headers_as_text(headers)} if headers else {}
    value: bytes = raw_value or b""
    raw = InputRecord(key or position.default_id(), value, metadata, position, headers)
    if not value:
        return DeadLetter.from_exception(raw, MalformedRecordError(f"{position.default_id()}: empty message value"))
    if value_format == "raw":
        return raw
    try:
        return _from_envelope(value, key, position, headers, metadata)
    except MalformedRecordError as exc:
        return DeadLetter.from_exception(raw, exc)
    except Exception as exc:  # noqa: BLE001 - any failure on one message is that message's dead letter
        error = MalformedRecordError(f"{position.default_id()}: cannot parse the message: {type(exc).__name__}: "
                                     f"{str(exc)[:200]}")
        return DeadLetter.from_exception(raw, error)


def _from_envelope(value: bytes, key: str | None, position: KafkaPosition, headers: tuple[tuple[str, bytes], ...],
                   metadata: dict[str, Any]) -> InputRecord:
    where = position.default_id()
    try:
        envelope = loads_strict(value)
    except JsonInputError as exc:
        raise MalformedRecordError(f"{where}: value is not a JSON envelope ({exc.code}): {exc}") from None
    if not isinstance(envelope, dict):
        raise MalformedRecordError(f"{where}: JSON envelope must be an object, got {type(envelope).__name__}")
    image_b64 = envelope.pop("image_b64", None)
    if not isinstance(image_b64, str) or not image_b64:
        raise MalformedRecordError(f"{where}: JSON envelope needs a non-empty string field 'image_b64'")
    try:
        image = base64.b64decode(image_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedRecordError(f"{where}: 'image_b64' is not valid base64: {exc}") from None
    record_id = envelope.pop("id", None)
    if record_id is not None and not isinstance(record_id, (str, int)):
        raise MalformedRecordError(f"{where}: JSON envelope 'id' must be a string or integer, "
                                   f"got {type(record_id).__name__}")
    return InputRecord(str(record_id) if record_id is not None else key or where, image,
                       {**metadata, **envelope}, position, headers)


class KafkaSource(GroupMember, Source):
    """Consume ``config.input_topics`` as member of ``config.group_id``. Not thread-safe: one thread polls,
    commits and closes."""

    _positions_survive_rebalance = True  # kafka-python 3 keeps the state of a partition assigned again

    def __init__(self, config: KafkaConfig, *, bootstrap_servers: str | None = None,
                 client_id: str = "cola-source") -> None:
        self.config = config
        options: dict[str, Any] = {
            "bootstrap_servers": (bootstrap_servers or config.bootstrap_servers).split(","),
            "group_id": config.group_id, "client_id": client_id, "enable_auto_commit": False,
            "auto_offset_reset": config.auto_offset_reset, "session_timeout_ms": config.session_timeout_ms,
            "heartbeat_interval_ms": config.heartbeat_interval_ms,
            "max_poll_interval_ms": config.max_poll_interval_ms, "fetch_max_bytes": config.fetch_max_bytes,
            "max_partition_fetch_bytes": config.max_partition_fetch_bytes,
            "max_poll_records": config.max_batch_records, **config.client_options,
        }
        self.exactly_once = config.guarantee == "exactly_once"
        if self.exactly_once:
            options["isolation_level"] = "read_committed"
        self._consumer = KafkaConsumer(**options)
        self._init_membership()
        self._paused = False
        self._consumer.subscribe(list(config.input_topics), listener=_Listener(self))

    # -- rebalance callbacks (run inside consumer.poll) --
    def _on_revoked(self, revoked: Iterable[Any]) -> None:
        self._revoked(set(revoked))

    def _on_assigned(self, assigned: Iterable[Any]) -> None:
        self._assigned(assigned)
        if self._paused and self._epochs:
            self._consumer.pause(*self._epochs)
        log.info("partitions assigned: %s", sorted(map(str, assigned)))

    # -- Source --
    def poll(self) -> Batch:
        cfg = self.config
        deadline = time.monotonic() + cfg.max_batch_wait_ms / 1000
        items: list[Collected] = []
        nbytes = 0
        while len(items) < cfg.max_batch_records and nbytes < cfg.max_batch_bytes:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            before = dict(self._epochs)  # rebalance callbacks run inside consumer.poll
            try:
                fetched = self._consumer.poll(timeout_ms=remaining_ms,
                                              max_records=cfg.max_batch_records - len(items))
            except UnsupportedCodecError as exc:  # every poll would fail on this offset again: stop, one line
                raise compression_error(exc, self._consumer) from None
            self._take(items, ((tp, message_to_record(message, cfg.value_format))
                               for tp, messages in fetched.items() for message in messages), before)
            nbytes += sum(len(message.value or b"") for messages in fetched.values() for message in messages)
            if remaining_ms == 0:
                break
        return assemble_batch(items, self._epochs)

    def _commit_offsets(self, offsets: Mapping[Any, int], *, reason: str, wait: bool = True) -> bool:
        """Always synchronous (``wait`` is ignored): kafka-python answers asynchronous commits only inside a later
        ``poll``, from its own thread's state."""
        try:
            self._consumer.commit(offsets={tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})
        except KafkaError as exc:  # retried with the next commit or before revocation; else re-delivered
            log.warning("offset commit (%s) failed, will retry: %s", reason, exc)
            return False
        return True

    # -- exactly_once --
    def transaction_offsets(self, batch: Batch) -> dict[Any, OffsetAndMetadata] | None:
        """The input offsets to commit in ``batch``'s transaction, or ``None`` when the batch is stale: one of its
        partitions was revoked, reassigned or rewound since it was polled (its records are read again)."""
        if self._stale(batch):
            return None
        positions: Positions = batch.position or {}
        return {tp: OffsetAndMetadata(offset, "", -1) for tp, (_epoch, offset) in positions.items()}

    def group_metadata(self) -> Any:
        """This member's group metadata (group id, generation, member id) for ``send_offsets_to_transaction``: a
        broker with KIP-447 rejects the offsets of a member that lost its generation in a rebalance."""
        return self._consumer.group_metadata()

    def _seek_committed(self, partitions: list[Any]) -> None:
        for tp in partitions:
            offset = self._committed.get(tp)
            if offset is None:
                offset = self._consumer.committed(tp)  # read_committed: waits for pending transactional offsets
            if offset is not None:
                self._consumer.seek(tp, offset)
            elif self.config.auto_offset_reset == "earliest":
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek_to_end(tp)

    def pause(self) -> None:
        self._paused = True
        if self._epochs:
            self._consumer.pause(*self._epochs)

    def resume(self) -> None:
        self._paused = False
        if self._epochs:
            self._consumer.resume(*self._epochs)

    @property
    def paused(self) -> bool:
        return self._paused

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class _Listener(ConsumerRebalanceListener):
    """Forwards kafka-python's rebalance callbacks to the source."""

    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._source._on_revoked(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._source._on_assigned(assigned)
