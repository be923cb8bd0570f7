"""What the kafka-python and the librdkafka sources share, independent of the client: which partitions this member
owns under which assignment, how one poll's messages become a :class:`~cola_moderation.connectors.records.Batch`,
and the bookkeeping of acknowledged / transactionally committed offsets.

Assignment epochs: every assignment (and every rewind) gives the partitions it covers a new epoch. A polled message
is tagged with its partition's epoch from before the client call that returned it (a partition assigned during the
call: its new epoch); the batch keeps it only if the partition is still assigned under that epoch when the poll
returns. So a message collected before its partition was revoked is dropped, and a batch whose partitions changed
epoch between poll and commit is not committed (at-least-once: its records are delivered again; exactly-once: its
transaction is aborted).

"Delivered again" needs the partition's position to go back to the committed offset. A new owner starts there, but
a partition that comes back to the same member in the rebalance does not always: kafka-python 3 keeps the position
of a partition assigned before and after a rebalance, and librdkafka may hand out, in the one consume call whose
rebalance callbacks ran, messages from before the revocation and from after the new assignment, which cannot be
told apart. Dropping them and moving on skipped them (for good once a later batch of the partition was committed).
So a partition that comes back is sought to its committed offset (:meth:`GroupMember._seek_committed`; a failure
there propagates: the job stops rather than skip), and the messages the client returned for it in that call are
dropped: its records are read again from the committed offset.

Commits (at-least-once): :meth:`GroupMember.commit` asks the client to commit a batch's offsets without waiting for
the broker's answer where the client can (``wait=False``; librdkafka's asynchronous commit), so the next poll does
not wait on a round trip. The offsets are still sent only after the sink acknowledged the batch, so nothing is
committed that was not written. Until the broker confirms them they are "in flight": a failed one goes back to the
acknowledged offsets (committed with the next batch) unless a later commit of the partition already carries it
further, and revocation and ``close`` commit synchronously the highest offset acknowledged or sent (the client
retries a failed commit on its own, so an older one can land after a newer one: until the next commit the broker may
hold the older offset). A crash re-delivers at most the batches whose commit the broker does not hold.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from cola_moderation.connectors.records import Batch, DeadLetter, InputRecord

log = logging.getLogger(__name__)

Positions = dict[Any, tuple[int, int]]
"""(topic, partition) -> (assignment epoch, next offset to commit)."""

Collected = tuple[Any, int, InputRecord | DeadLetter]
"""One polled message: its partition, the partition's assignment epoch when it was collected, what it became."""


def assemble_batch(collected: Iterable[Collected], epochs: Mapping[Any, int]) -> Batch:
    """The batch of one poll: records and dead letters in poll order, each kept only if its partition is assigned
    under the epoch it was collected in (see the module docstring), and per partition the offset after the last one
    kept."""
    positions: Positions = {}
    records: list[InputRecord] = []
    dead: list[DeadLetter] = []
    for tp, epoch, item in collected:
        if epochs.get(tp) != epoch:
            continue  # collected before a revocation: the partition's (new) owner reads it again
        if isinstance(item, InputRecord):
            offset = item.source.offset  # type: ignore[union-attr]
            records.append(item)
        else:
            offset = item.record.source.offset  # type: ignore[union-attr]
            dead.append(item)
        positions[tp] = (epoch, offset + 1)
    key = ",".join(f"{tp.topic}-{tp.partition}@{off}" for tp, (_e, off) in sorted(positions.items()))
    return Batch(key, tuple(records), tuple(dead), positions)


class GroupMember(ABC):
    """Assignment epochs and offset bookkeeping of one consumer-group member; the client-specific source supplies
    :meth:`_commit_offsets` and calls :meth:`_assigned` / :meth:`_revoked` from its rebalance callbacks."""

    exactly_once: bool
    _positions_survive_rebalance = False
    """Whether the client keeps the position of a partition that is assigned again after a rebalance (kafka-python
    3) rather than starting it from the committed offset (librdkafka)."""

    def _init_membership(self) -> None:
        self._epoch = 0
        self._epochs: dict[Any, int] = {}  # assigned partition -> epoch of its assignment
        self._acked: dict[Any, int] = {}  # acknowledged, not yet committed: partition -> next offset
        self._inflight: dict[Any, int] = {}  # sent without waiting, not yet confirmed: partition -> next offset
        self._sent: dict[Any, int] = {}  # the highest offset sent without waiting, confirmed or not, per partition
        self._committed: dict[Any, int] = {}  # exactly_once: committed in a transaction by this member
        self._revoked_since: set[Any] = set()  # revoked, not assigned again yet
        self._committed_revoked: dict[Any, int] = {}  # exactly_once: _committed of those
        self._came_back: set[Any] = set()  # assigned again after a revocation, not yet sought

    @abstractmethod
    def _commit_offsets(self, offsets: Mapping[Any, int], *, reason: str, wait: bool = True) -> bool:
        """Commit ``offsets`` (partition -> next offset) for the group; ``False`` if the commit failed. With
        ``wait=False`` a client that can commits asynchronously: ``True`` then means sent, and the offsets go in
        ``_inflight`` until :meth:`_commit_answered` hears the broker's answer."""

    def _commit_answered(self, tp: Any, offset: int, error: Any) -> None:
        """The broker's answer to an asynchronous commit of ``tp`` up to ``offset`` (``error`` None: committed)."""
        if self._inflight.get(tp) != offset:
            return  # a later commit carries the partition further (or it was revoked): that one counts
        del self._inflight[tp]
        if error is None:
            return
        if tp in self._epochs:
            log.warning("offset commit of %s up to %d failed (%s); committing it with the next batch", tp, offset,
                        error)
            self._acked[tp] = max(offset, self._acked.get(tp, 0))
        else:
            log.warning("offset commit of %s up to %d failed (%s) after the partition was revoked; its new owner "
                        "reads those records again", tp, offset, error)

    def _commit_unconfirmed(self, partitions: Iterable[Any], *, reason: str) -> None:
        """Commit, waiting for the answer, the highest offset acknowledged or sent without waiting for
        ``partitions``: also one already confirmed, since the client retries a commit on its own and a retried older
        commit can land after a newer one."""
        todo = {tp: max(self._acked.get(tp, -1), self._inflight.get(tp, -1), self._sent.get(tp, -1))
                for tp in partitions if tp in self._acked or tp in self._inflight or tp in self._sent}
        for tp in todo:
            self._acked.pop(tp, None)
            self._inflight.pop(tp, None)
            self._sent.pop(tp, None)
        if todo and not self._commit_offsets(todo, reason=reason):
            self._acked.update(todo)  # retried with the next commit, if this member still owns them

    @abstractmethod
    def _seek_committed(self, partitions: list[Any]) -> None:
        """Seek ``partitions`` (assigned) to their committed offsets (``auto_offset_reset`` where none is)."""

    def _take(self, items: list[Collected], fetched: Iterable[tuple[Any, InputRecord | DeadLetter]],
              before: Mapping[Any, int]) -> None:
        """Add the messages one client call returned to ``items``, tagged with their partition's epoch ``before``
        the call; those of a partition whose assignment changed during the call are dropped, and the partition, if
        this member owns it again, is sought back to its committed offset (see the module docstring)."""
        back, self._came_back = self._came_back, set()
        dropped: set[Any] = set()
        for tp, item in fetched:
            # not owned before the call: assigned during it, and its messages came after that
            epoch = before[tp] if tp in before else self._epochs.get(tp, -1)
            if tp in back or self._epochs.get(tp) != epoch:
                dropped.add(tp)
                continue
            items.append((tp, epoch, item))
        seek = sorted(tp for tp in back if tp in self._epochs and (self._positions_survive_rebalance or tp in dropped))
        if seek:
            log.info("partitions %s came back in a rebalance: reading them again from the committed offsets",
                     [str(tp) for tp in seek])
            self._seek_committed(seek)

    def rewind(self) -> None:
        """After an aborted transaction: seek every assigned partition back to its committed offset and mark the
        batches polled so far stale (:meth:`transaction_offsets` returns ``None`` for them)."""
        partitions = self._renew_epochs()
        self._seek_committed(partitions)
        log.info("rewound %d partitions to their committed offsets", len(partitions))

    def _revoked(self, revoked: set[Any]) -> None:
        """Before ``revoked`` are taken away: commit what was acknowledged for them, then forget them."""
        self._commit_unconfirmed(revoked, reason="before revocation")
        for tp in revoked:
            self._epochs.pop(tp, None)
            self._acked.pop(tp, None)
            if tp in self._committed:
                self._committed_revoked[tp] = self._committed.pop(tp)
        self._revoked_since |= revoked
        log.info("partitions revoked: %s", sorted(map(str, revoked)))

    def _assigned(self, assigned: Iterable[Hashable]) -> None:
        self._epoch += 1
        for tp in assigned:
            self._epochs[tp] = self._epoch
            if tp in self._revoked_since:
                self._came_back.add(tp)
                # back in the assignment that follows its revocation: no other member owned it in between, so
                # what this member committed is its committed offset (the broker's answer can lag behind: Tansu
                # applies transactional offsets only once overlapping transactions completed)
                if tp in self._committed_revoked:
                    self._committed[tp] = self._committed_revoked[tp]
        self._revoked_since.clear()
        self._committed_revoked.clear()

    def _renew_epochs(self) -> list[Any]:
        """Give every assigned partition a new epoch (batches polled so far become stale); returns them."""
        self._epoch += 1
        for tp in self._epochs:
            self._epochs[tp] = self._epoch
        return list(self._epochs)

    def commit(self, batch: Batch) -> None:
        positions: Positions = batch.position or {}
        if self.exactly_once:  # the sink committed the offsets in the batch's transaction
            for tp, (_epoch, offset) in positions.items():
                self._committed[tp] = offset
            return
        for tp, (epoch, offset) in positions.items():
            if self._epochs.get(tp) != epoch:
                log.warning("not committing %s up to %d: the partition was reassigned since the batch was polled; "
                            "its records will be delivered again", tp, offset)
                continue
            self._acked[tp] = max(offset, self._acked.get(tp, 0))
        if self._acked and self._commit_offsets(dict(self._acked), reason="acknowledged batch", wait=False):
            self._acked.clear()

    def combine(self, batches: Sequence[Batch]) -> Batch:
        """The one batch a grouped commit of ``batches`` (in poll order) commits: per partition the offset after the
        last batch's messages, under the oldest epoch any of them was polled in, so that the group is stale (not
        committed at-least-once; its transaction aborted exactly-once) if any of its batches is. It holds no
        records: the loop writes each batch's before it commits the group."""
        positions: Positions = {}
        for batch in batches:
            for tp, (epoch, offset) in (batch.position or {}).items():
                earlier = positions.get(tp)
                positions[tp] = (epoch if earlier is None else min(epoch, earlier[0]), offset)
        key = batches[0].key if len(batches) == 1 else f"{batches[0].key} .. {batches[-1].key} ({len(batches)} batches)"
        return Batch(key, (), (), positions)

    def _stale(self, batch: Batch) -> bool:
        """Whether one of ``batch``'s partitions was revoked, reassigned or rewound since it was polled."""
        positions: Positions = batch.position or {}
        return any(self._epochs.get(tp) != epoch for tp, (epoch, _offset) in positions.items())

    def assignment(self) -> set[Any]:
        """Partitions currently assigned to this member."""
        return set(self._epochs)

    def owns_input(self) -> bool:
        return bool(self._epochs)
