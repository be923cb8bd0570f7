"""The transaction probe of ``kafka_tools`` against the test broker: what it reports is what the tests skip on."""

from __future__ import annotations

from typing import Any

import pytest

from cola_moderation.connectors.local.broker import EmbeddedBroker


def test_the_stale_member_check_names_what_the_broker_let_through(kafka_broker: Any,
                                                                    broker_transactions: list[Any]) -> None:
    """``stale_member_fenced`` (offsets committed in a transaction under a member id and generation the group does
    not have): a broker that fences them passes; one that does not fails with the offset it committed. The embedded
    Tansu does not fence them (docs/delivery.md), which is why the grouped exactly-once SIGKILL test skips there;
    if an upgraded Tansu starts fencing, this test fails so that the skip is revisited."""
    failed = {check.name: check for check in broker_transactions}
    if not isinstance(kafka_broker, EmbeddedBroker):
        assert "stale_member_fenced" not in failed, failed["stale_member_fenced"].detail  # Apache Kafka 2.5+
        return
    check = failed.get("stale_member_fenced")
    if check is None:
        pytest.fail("the embedded broker now rejects offsets from members not in the group: un-skip the grouped "
                    "exactly-once SIGKILL test in tests/connectors/kafka/test_transactions.py and update "
                    "docs/delivery.md")
    assert "member id 'stale-member'" in check.detail and "generation 7 committed" in check.detail, check.detail
