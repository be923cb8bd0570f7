"""GroupMember's commit bookkeeping (client-independent): asynchronous commits, their answers, and what revocation
commits. The member here records the offsets it is asked to commit; the commits themselves are checked against the
real broker, with both clients, in test_source.py and test_delivery.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kafka.structs import TopicPartition

from cola_moderation.connectors.kafka.membership import GroupMember
from cola_moderation.connectors.records import Batch

P0, P1 = TopicPartition("in", 0), TopicPartition("in", 1)


class RecordingMember(GroupMember):
    exactly_once = False

    def __init__(self, *, fail_sync: bool = False) -> None:
        self._init_membership()
        self.calls: list[tuple[dict[Any, int], bool]] = []
        self.fail_sync = fail_sync

    def _commit_offsets(self, offsets: Mapping[Any, int], *, reason: str, wait: bool = True) -> bool:
        self.calls.append((dict(offsets), wait))
        if wait:
            return not self.fail_sync
        self._inflight.update(offsets)
        self._sent.update(offsets)
        return True

    def _seek_committed(self, partitions: list[Any]) -> None:
        raise AssertionError("not sought in these tests")


def _batch(epoch: int, **offsets: int) -> Batch:
    parts = {"p0": P0, "p1": P1}
    return Batch("b", (), (), {parts[name]: (epoch, offset) for name, offset in offsets.items()})


def test_batches_are_committed_without_waiting_and_a_failed_answer_goes_with_the_next_batch() -> None:
    member = RecordingMember()
    member._assigned([P0, P1])
    member.commit(_batch(1, p0=10, p1=5))
    assert member.calls == [({P0: 10, P1: 5}, False)]
    assert member._inflight == {P0: 10, P1: 5} and not member._acked
    member._commit_answered(P1, 5, None)  # committed
    member._commit_answered(P0, 10, "REBALANCE_IN_PROGRESS")  # failed: back to the acknowledged offsets
    assert member._inflight == {} and member._acked == {P0: 10}
    member.commit(_batch(1, p1=9))
    assert member.calls[-1] == ({P0: 10, P1: 9}, False)  # the failed offset rides with the next commit


def test_a_failed_answer_superseded_by_a_later_commit_is_not_committed_again() -> None:
    member = RecordingMember()
    member._assigned([P0])
    member.commit(_batch(1, p0=10))
    member.commit(_batch(1, p0=20))
    member._commit_answered(P0, 10, "COORDINATOR_LOAD_IN_PROGRESS")  # the commit up to 20 carries it further
    assert member._inflight == {P0: 20} and not member._acked
    member._commit_answered(P0, 20, None)
    assert member._inflight == {} and not member._acked


def test_revocation_commits_what_is_unconfirmed_and_waits() -> None:
    member = RecordingMember()
    member._assigned([P0, P1])
    member.commit(_batch(1, p0=10, p1=5))
    member._acked[P1] = 7  # acknowledged after the last commit was sent
    member._revoked({P0, P1})
    assert member.calls[-1] == ({P0: 10, P1: 7}, True)
    assert member._inflight == {} and member._acked == {}
    member._commit_answered(P0, 10, "NOT_COORDINATOR")  # late answer for a partition no longer owned: dropped
    assert member._acked == {}


def test_an_unconfirmed_commit_that_fails_at_revocation_is_not_kept_for_a_partition_that_left() -> None:
    member = RecordingMember(fail_sync=True)
    member._assigned([P0])
    member.commit(_batch(1, p0=10))
    member._revoked({P0})
    assert member.calls[-1] == ({P0: 10}, True)
    assert member._acked == {} and member._inflight == {}  # its new owner reads from the committed offset


def test_a_stale_batch_is_not_committed() -> None:
    member = RecordingMember()
    member._assigned([P0])
    member._revoked({P0})
    member._assigned([P0])  # a new epoch
    member.commit(_batch(1, p0=10))
    assert member.calls == []


def test_revocation_commits_the_highest_offset_sent_even_when_every_answer_was_success() -> None:
    """The client retries a commit on its own, so an older commit can land after a newer one and leave the broker
    holding the older offset although both answers were success: revocation commits the highest one again."""
    member = RecordingMember()
    member._assigned([P0])
    member.commit(_batch(1, p0=10))
    member.commit(_batch(1, p0=20))
    member._commit_answered(P0, 20, None)
    member._commit_answered(P0, 10, None)  # late: a retried request, applied after the one up to 20
    assert member._inflight == {} and member._acked == {}
    member._revoked({P0})
    assert member.calls[-1] == ({P0: 20}, True)


def test_a_group_commits_each_partitions_last_offset_and_is_stale_if_any_of_its_batches_is() -> None:
    member = RecordingMember()
    member._assigned([P0, P1])  # epoch 1
    first, second = _batch(1, p0=10), _batch(1, p0=14, p1=3)
    group = member.combine([first, second])
    assert group.position == {P0: (1, 14), P1: (1, 3)} and not member._stale(group)
    member.commit(group)
    assert member.calls == [({P0: 14, P1: 3}, False)]
    # p0 came back in a rebalance between the batches (epoch 2): the first batch's records are read again, so the
    # group must not commit (exactly_once: its transaction is aborted), though its last batch alone is current
    member._revoked({P0})
    member._assigned([P0])
    current = _batch(2, p0=4)
    group = member.combine([_batch(1, p0=20), current])
    assert not member._stale(current) and member._stale(group) and group.position == {P0: (1, 4)}
    calls = len(member.calls)  # the last: the revocation's synchronous commit of p0
    member.commit(group)  # at-least-once: the stale partition is left for its records to be delivered again
    assert len(member.calls) == calls and member.calls[-1] == ({P0: 14}, True)
