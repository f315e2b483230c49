"""A consumer group's state on one topic partition: cursor, pending list, acks (pure).

The state is a join-semilattice so that replicas can merge copies in any order and a cursor
never moves backwards:

* ``floor``: every sequence below it is done (acked, terminated or dead-lettered); max-merged.
* ``next``: the first sequence never handed out; max-merged.
* ``done``: sequences in ``[floor, next)`` finished out of order; union-merged.
* ``pending``: sequences handed out and not done, each with the consumer holding it, its
  delivery count and a revision bumped by ``in_progress``/``nak``; per sequence the higher
  ``(deliveries, rev)`` wins, and done always beats pending.

Every change made by the sequencer is a *delta* of the same shape, replicated to W replicas
before the consumer sees its effect (a delivery, an ack's success), so a replica that takes
over knows every delivery and every ack that was reported. Deadlines are the sequencer's
monotonic time; a new sequencer restarts every pending deadline at ``now + ack_wait`` (see
:meth:`GroupState.restart_deadlines`), so a failover never redelivers early.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from peer_ring.pubsub._errors import NotHeldError, StaleAckError

#: The merge rank of a record made for a committed message (above every epoch).
_COMMITTED = 1 << 64


@dataclass(frozen=True, slots=True)
class Pending:
    """A delivered, unfinished message.

    Attributes:
        consumer: the subscriber holding it.
        deliveries: how many times it was delivered (1 on the first delivery).
        rev: bumped by ``in_progress`` / ``nak`` within one delivery.
        deadline: when it may be redelivered (the sequencer's monotonic time).
        wait: the duration that set ``deadline`` (``ack_wait`` or a nak's delay); a new
            sequencer, whose clock differs, restarts the deadline as ``now + wait``.
        epoch: 0 for a record made for a committed message. A record sent with the APPEND
            that carries its (not yet committed) message holds that message's offset epoch
            instead: it stands only while the entry at its sequence has that epoch. If the
            append failed and a takeover filled the sequence differently, the record is
            *stale* (see :meth:`GroupState.claim`).
    """

    consumer: str
    deliveries: int
    rev: int
    deadline: float
    wait: float = 0.0
    epoch: int = 0

    def version(self) -> tuple[int, int, int, float, float, str]:
        """Merge order: a record made for a committed message over one sent with an
        append, and of those the later epoch; then later delivery, later revision, later
        deadline.

        Why the epoch comes first: two records of one sequence with different append
        epochs, or one of each kind, meet only when one of them is stale. A record sent
        with an APPEND of epoch ``e`` for sequence ``s`` is stale exactly when the append
        failed and ``s`` was filled by a later epoch (never by an earlier one: ``start[e]``
        was on W replicas before ``e`` assigned ``s``), and any record made for a committed
        message is made for the entry that stays. Ordering by delivery count first would
        let a stale record with a later deadline (another node's clock) or revision take
        the message from the consumer that really holds it.
        """
        return (
            self.epoch or _COMMITTED,
            self.deliveries,
            self.rev,
            self.deadline,
            self.wait,
            self.consumer,
        )


@dataclass(slots=True)
class Claim:
    """What one fetch hands out.

    Attributes:
        deliver: ``(seq, deliveries)`` to send to the consumer.
        dead: sequences that reached ``max_deliver``, for the dead-letter topic.
        expired: messages that left retention before this group saw them.
        delta: the state change to replicate before delivering.
    """

    deliver: list[tuple[int, int]] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    expired: int = 0
    delta: GroupState | None = None


@dataclass(slots=True)
class GroupState:
    """One group's progress on one partition."""

    floor: int = 0
    next: int = 0
    done: set[int] = field(default_factory=set)
    pending: dict[int, Pending] = field(default_factory=dict)

    # ----------------------------------------------------------------- queries
    def is_done(self, seq: int) -> bool:
        """True when ``seq`` was acked, terminated or dead-lettered."""
        return seq < self.floor or seq in self.done

    def held_by(self, consumer: str) -> int:
        """How many messages ``consumer`` holds."""
        return sum(1 for p in self.pending.values() if p.consumer == consumer)

    def copy(self) -> GroupState:
        """An independent copy."""
        return GroupState(self.floor, self.next, set(self.done), dict(self.pending))

    # ------------------------------------------------------------------- merge
    def merge(self, other: GroupState) -> None:
        """Join ``other`` into this state (commutative, associative, idempotent).

        Costs O(size of ``other`` + how far the floor moves), not O(size of this state):
        the sequencer merges one small delta per fetch and per ack batch.
        """
        old_floor = self.floor
        for seq in other.done:
            if seq >= self.floor:
                self.done.add(seq)
                self.pending.pop(seq, None)
        for seq, theirs in other.pending.items():
            if seq < other.floor or seq in self.done or seq < self.floor:
                continue
            mine = self.pending.get(seq)
            if mine is None or theirs.version() > mine.version():
                self.pending[seq] = theirs
        self.floor = max(self.floor, other.floor)
        while self.floor in self.done:
            self.done.discard(self.floor)
            self.floor += 1
        self.next = max(self.next, other.next, self.floor)
        if self.floor > old_floor:
            self._drop_below(old_floor)

    def _drop_below(self, old_floor: int) -> None:
        """Forget done / pending entries below the floor (which moved up from old_floor)."""
        if self.floor - old_floor <= len(self.pending) + len(self.done):
            for seq in range(old_floor, self.floor):
                self.pending.pop(seq, None)
                self.done.discard(seq)
        else:  # a long jump (retention): scanning what is held is cheaper
            self.pending = {s: p for s, p in self.pending.items() if s >= self.floor}
            self.done = {s for s in self.done if s >= self.floor}

    def _normalize(self) -> None:
        for seq in [s for s in self.pending if self.is_done(s)]:
            del self.pending[seq]
        while self.floor in self.done:
            self.done.discard(self.floor)
            self.floor += 1
        self.next = max(self.next, self.floor)
        self.done = {s for s in self.done if s >= self.floor}

    # ---------------------------------------------------------- sequencer ops
    def claim(
        self,
        consumer: str,
        limit: int,
        is_message: Callable[[int], bool],
        first: int,
        end: int,
        now: float,
        ack_wait: float,
        max_deliver: int,
        *,
        stale: Callable[[int, Pending], bool] | None = None,
        tentative_after: int | None = None,
        epoch: int = 0,
    ) -> Claim:
        """Hand up to ``limit`` messages to ``consumer`` and return the delta to replicate.

        Expired pending messages are redelivered first (oldest first); those that already
        had ``max_deliver`` deliveries are returned in ``dead`` instead. A *stale* pending
        record (``stale(seq, pending)``: it was sent with an append that failed, and the
        entry now at its sequence is another one) is handed out at once whatever its
        deadline says, with its delivery count unchanged and a higher revision (nobody
        ever received what it recorded), or finished if the sequence now holds a no-op.
        Then new messages from ``next`` up to ``end`` (exclusive); ``is_message(seq)`` is
        False for no-ops, which are finished at once. Sequences below ``first`` (the
        log's first retained one) are gone: the cursor moves to ``first`` and
        ``claim.expired`` counts the messages that were never delivered.

        ``epoch`` is the claiming sequencer's epoch. With ``tentative_after``, sequences
        above it are not committed yet (they travel in the APPEND this delta will ride
        on): their records carry ``epoch`` (the offset epoch of those entries), so a
        takeover that fills them differently makes them stale. Nothing is applied here:
        the caller replicates ``claim.delta`` and then merges it.
        """
        claim = Claim()
        delta = GroupState(floor=max(self.floor, first), next=max(self.next, first))
        claim.expired = max(0, first - self.next)
        # A record of this sequencer's own epoch is never stale (a failed append steps
        # the sequencer down; the next one has a higher epoch).
        due = [
            s
            for s, p in self.pending.items()
            if first <= s < end
            and (
                p.deadline <= now
                or (p.epoch and p.epoch != epoch and stale is not None and stale(s, p))
            )
        ]
        after = end if tentative_after is None else tentative_after

        def tag(seq: int) -> int:  # the epoch a record at ``seq`` is conditional on
            return epoch if seq > after else 0

        for seq in sorted(due):
            if len(claim.deliver) >= limit:
                break
            p = self.pending[seq]
            if p.epoch and p.epoch != epoch and stale is not None and stale(seq, p):
                if not is_message(seq):
                    delta.done.add(seq)
                    continue
                delta.pending[seq] = Pending(
                    consumer, p.deliveries, p.rev + 1, now + ack_wait, ack_wait, tag(seq)
                )
                claim.deliver.append((seq, p.deliveries))
                continue
            if p.deliveries >= max_deliver:
                claim.dead.append(seq)
                continue
            delta.pending[seq] = Pending(
                consumer, p.deliveries + 1, 0, now + ack_wait, ack_wait, tag(seq)
            )
            claim.deliver.append((seq, p.deliveries + 1))
        seq = delta.next
        fresh = Pending(consumer, 1, 0, now + ack_wait, ack_wait)  # shared: it is immutable
        stop = min(after + 1, end)
        while seq < stop and len(claim.deliver) < limit:
            if is_message(seq):
                delta.pending[seq] = fresh
                claim.deliver.append((seq, 1))
            else:
                delta.done.add(seq)
            seq += 1
        # The uncommitted entries of an append (a publish batch: messages only).
        if seq < end and len(claim.deliver) < limit:
            tentative = Pending(consumer, 1, 0, now + ack_wait, ack_wait, epoch)
            while seq < end and len(claim.deliver) < limit:
                delta.pending[seq] = tentative
                claim.deliver.append((seq, 1))
                seq += 1
        delta.next = seq
        delta._normalize()
        claim.delta = delta
        return claim

    def check_held(self, consumer: str, seq: int, deliveries: int) -> Pending | None:
        """The pending entry ``consumer`` holds at ``seq``, or None if already done.

        Raises:
            StaleAckError: the message was redelivered since (another delivery count).
            NotHeldError: the message was never delivered, or is held by someone else.
        """
        if self.is_done(seq):
            return None
        p = self.pending.get(seq)
        if p is None:
            raise NotHeldError(f"message {seq} is not held by any consumer of this group")
        if p.deliveries != deliveries:
            raise StaleAckError(
                f"message {seq} was redelivered (delivery {p.deliveries}, "
                f"this is delivery {deliveries}); its ack_wait had expired"
            )
        if p.consumer != consumer:
            raise NotHeldError(f"message {seq} is held by another consumer")
        return p

    def finish(self, consumer: str, seqs: Iterable[tuple[int, int]]) -> GroupState:
        """Delta that acks (or terminates) ``(seq, deliveries)`` pairs held by ``consumer``.

        Raises:
            StaleAckError / NotHeldError: see :meth:`check_held` (nothing is changed).
        """
        delta = GroupState(floor=self.floor, next=self.next)
        for seq, deliveries in seqs:
            self.check_held(consumer, seq, deliveries)
            # Already done: replicate it again anyway, so a repeated ack is only reported
            # once the ack is durable (the first one may still be replicating).
            if seq >= self.floor:
                delta.done.add(seq)
        delta._normalize()
        return delta

    def extend(
        self, consumer: str, seq: int, deliveries: int, now: float, wait: float
    ) -> GroupState:
        """Delta that moves a held message's deadline (``in_progress`` or ``nak(delay)``).

        Raises:
            StaleAckError / NotHeldError: see :meth:`check_held`.
        """
        delta = GroupState(floor=self.floor, next=self.next)
        p = self.check_held(consumer, seq, deliveries)
        if p is not None:
            delta.pending[seq] = replace(p, rev=p.rev + 1, deadline=now + wait, wait=wait)
        return delta

    def mark_done(self, seqs: Iterable[int]) -> GroupState:
        """Delta that finishes ``seqs`` whoever holds them (dead-lettered messages)."""
        return GroupState(floor=self.floor, next=self.next, done=set(seqs))

    def restart_deadlines(self, now: float) -> None:
        """Restart every pending deadline at ``now + wait`` (after a takeover: the old
        sequencer's monotonic clock means nothing here, and redelivering early would give
        a message to two live consumers)."""
        for seq, p in self.pending.items():
            self.pending[seq] = replace(p, deadline=now + p.wait)

    def adopt_orphans(self, now: float, is_message: Callable[[int], bool]) -> int:
        """Make every sequence below ``next`` that is neither done nor pending deliverable.

        A new sequencer calls this after merging what its quorum knows: the delta that
        handed such a message out was lost with the replicas that held it (more failures
        than N - W), and without this the message would never be delivered again. It is
        redelivered instead (at least once); a no-op is simply finished. Returns how many
        messages were adopted.
        """
        adopted = 0
        for seq in range(self.floor, self.next):
            if seq in self.done or seq in self.pending:
                continue
            if is_message(seq):
                self.pending[seq] = Pending("", 0, 0, now, 0.0)
                adopted += 1
            else:
                self.done.add(seq)
        while self.floor in self.done:
            self.done.discard(self.floor)
            self.floor += 1
        return adopted

    def release(self, consumer: str) -> GroupState:
        """Delta making ``consumer``'s messages redeliverable now (it closed cleanly)."""
        delta = GroupState(floor=self.floor, next=self.next)
        for seq, p in self.pending.items():
            if p.consumer == consumer:
                delta.pending[seq] = replace(p, rev=p.rev + 1, deadline=float("-inf"), wait=0.0)
        return delta
