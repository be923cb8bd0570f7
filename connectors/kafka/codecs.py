"""Compression codecs of Kafka record batches: which Python packages kafka-python needs for each, and the one-line
error for a batch it still cannot decompress.

kafka-python decompresses a fetched batch only when the codec's library imports (:mod:`kafka.codec`): gzip is in the
standard library; snappy needs ``python-snappy``, lz4 ``lz4``, zstd ``zstandard`` (all dependencies of this
package). A producer may still use a codec this consumer lacks (a broken install, or a codec Kafka adds later): the
consumer then fails on the same offset at every poll, so the source stops with :class:`UnsupportedCompressionError`
naming the codec, topic, partition and offset (exit code 2) instead of crashing and re-reading it in a loop.
"""

from __future__ import annotations

import re
from typing import Any

from kafka import codec

from cola_moderation.connectors.errors import BrokerError

CODEC_PACKAGES: dict[str, str] = {"gzip": "", "snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}
"""Codec -> the PyPI package kafka-python needs for it ("" = standard library)."""

_AVAILABLE = {"gzip": codec.has_gzip, "snappy": codec.has_snappy, "lz4": codec.has_lz4, "zstd": codec.has_zstd}
_CODEC_IN_MESSAGE = re.compile(r"for (\w+) compression codec|compression type: (\w+)")


class UnsupportedCompressionError(BrokerError):
    """A fetched record batch uses a compression codec this consumer cannot decompress."""

    stage = "source"


def missing_codecs() -> list[str]:
    """The codecs kafka-python cannot decompress in this environment (empty when every dependency is installed)."""
    return [name for name, available in _AVAILABLE.items() if not available()]


def compression_error(exc: Exception, consumer: Any) -> UnsupportedCompressionError:
    """The one-line error for kafka-python's ``UnsupportedCodecError`` raised by ``consumer.poll``: the codec (from
    the message), and the topic, partition and offset being fetched when kafka-python knows them."""
    match = _CODEC_IN_MESSAGE.search(str(exc))
    name = next((group for group in match.groups() if group), "unknown") if match else "unknown"
    records = getattr(getattr(consumer, "_fetcher", None), "_next_partition_records", None)
    partition = getattr(records, "topic_partition", None)
    where = (f"topic {partition.topic!r} partition {partition.partition} at offset "
             f"{getattr(records, 'next_fetch_offset', '?')}" if partition is not None else "a fetched partition")
    package = CODEC_PACKAGES.get(name)
    fix = f"pip install {package}" if package else "reinstall cola-moderation with its dependencies"
    return UnsupportedCompressionError(
        f"cannot decompress {name}-compressed records of {where}: {exc} ({fix}; the offset stays uncommitted)")
