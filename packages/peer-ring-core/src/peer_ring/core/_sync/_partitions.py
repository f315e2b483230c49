"""What this node must pull, may serve and may drop: the per-partition bookkeeping.

Pure state, no I/O (the asyncio driver is :mod:`peer_ring.core._sync._manager`). Every
partition is in one of these states on a node:

* **replicated and synced** — in this node's preference lists (at the node's default
  replication N) and pulled: it serves reads.
* **pending** — replicated but not pulled yet (the node just started, or just gained the
  partition through a ring change). It accepts writes (they merge with what is pulled:
  records are mergeable) but refuses reads with "not ready", so that an empty new replica
  never answers "not found" in a read quorum; the coordinator then reads from the
  partition's previous holders instead (:meth:`PartitionTable.holders`).
* **held** — no longer replicated (lost in a ring change, or data that arrived for a
  partition this node does not replicate — a write from a coordinator whose view is
  ahead or behind). Kept and served until the current replicas confirmed they have the
  records (handoff), then dropped — riak_core's "handoff before delete".
* **absent** — none of the above.

A pull *attempt* asks every live member for the partition's digests (so the data is
found wherever it is, even after several membership changes), merges every answer that
differs, and is judged by :func:`decide_pull`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from peer_ring.core._errors import PeerUnavailableError
from peer_ring.core._ring import Ring
from peer_ring.core._sync._digests import HoldState
from peer_ring.core._sync._planning import plan_ring_change

logger = logging.getLogger(__name__)


class PartitionNotReadyError(PeerUnavailableError):
    """A node was asked to read a partition it is still pulling.

    Sent as status ``UNAVAILABLE`` (the node is up but cannot serve this now); the
    coordinator counts the replica as failed for the read quorum and asks the
    partition's previous holders instead.
    """

    def __init__(self, node: str, partition: int) -> None:
        super().__init__(node, f"partition {partition} is not ready on {node} (still pulling it)")
        self.partition = partition


class PullOutcome(enum.Enum):
    """How one pull attempt of a partition ended (see :func:`decide_pull`)."""

    #: Merged from at least one replica that holds a complete copy: synced.
    SYNCED = "synced"
    #: Every candidate answered and none holds a complete copy (a new cluster, or all
    #: replicas restarted empty): there is nothing to pull, synced.
    NOTHING = "nothing"
    #: No complete copy reached yet and some candidates did not answer: try again.
    RETRY = "retry"
    #: Still no complete copy after ``give_up_after`` seconds: declared synced with what
    #: was merged (logged); anti-entropy repairs the rest once the others are back.
    GAVE_UP = "gave_up"


def decide_pull(
    candidates: Collection[str],
    answers: Mapping[str, HoldState],
    merged_complete: bool,
    pending_for: float,
    give_up_after: float,
) -> PullOutcome:
    """Judge one pull attempt of a partition.

    Args:
        candidates: the nodes that were asked (or should have been: suspected ones that
            were skipped count as not answering).
        answers: what each node that answered holds of the partition.
        merged_complete: whether the records of at least one COMPLETE holder were merged
            (its differing buckets transferred and applied without error).
        pending_for: seconds the partition has been pending.
        give_up_after: when to stop waiting for a complete copy.
    """
    if merged_complete:
        return PullOutcome.SYNCED
    if all(node in answers for node in candidates) and not any(
        state is HoldState.COMPLETE for state in answers.values()
    ):
        return PullOutcome.NOTHING
    if pending_for >= give_up_after:
        return PullOutcome.GAVE_UP
    return PullOutcome.RETRY


@dataclass(slots=True)
class _Pull:
    since: float
    next_at: float
    holders: tuple[str, ...]
    attempts: int = 0


@dataclass(slots=True)
class _Held:
    since: float
    next_at: float
    lost: bool  # False: stray data of a partition this node never replicated
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class RingChange:
    """What one ring change means for this node.

    Attributes:
        gained: partitions to pull (replicated now, not synced before).
        lost: partitions no longer replicated (held until handed off).
    """

    gained: frozenset[int]
    lost: frozenset[int]


@dataclass(slots=True)
class Counters:
    """Monotonic counters of the partition bookkeeping (for ``sync_status``)."""

    synced: int = 0
    nothing_to_pull: int = 0
    given_up: int = 0
    retries: int = 0
    handed_off: int = 0
    dropped: int = 0
    dropped_unconfirmed: int = 0
    gained: int = 0
    lost: int = 0
    stray: int = 0


@dataclass(slots=True)
class PartitionTable:
    """Per-partition sync state of one node.

    Args:
        me: this node's address.
        replication: the default replication N the table is kept at.
        handoff_delay: seconds to wait after a loss before handing a partition off.
        handoff_retention: seconds after which an unconfirmed lost partition is dropped.
        retry_initial / retry_max: backoff between pull attempts (doubling, capped).
        give_up_after: see :func:`decide_pull`.
    """

    me: str
    replication: int
    handoff_delay: float = 2.0
    handoff_retention: float = 600.0
    retry_initial: float = 0.5
    retry_max: float = 5.0
    give_up_after: float = 60.0
    replicated: frozenset[int] = frozenset()
    pending: dict[int, _Pull] = field(default_factory=dict)
    held: dict[int, _Held] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    started: bool = False
    initial_total: int = 0
    ready: bool = False
    #: Bumped by :meth:`retry_now`; an attempt that started before the bump and fails is
    #: retried at once rather than after its backoff (the peer it missed is back).
    epoch: int = 0

    # -- transitions -----------------------------------------------------------------------

    def start(self, ring: Ring, now: float) -> None:
        """Begin: every partition this node replicates must be pulled (the node may be a
        restarted in-memory node that came back empty)."""
        self.started = True
        self.ready = False
        self.held.clear()
        self.replicated = ring.partitions_of(self.me, self.replication)
        self.pending = {p: _Pull(now, now, ()) for p in sorted(self.replicated)}
        self.initial_total = len(self.pending)
        self._check_ready()

    def mark_all_synced(self) -> None:
        """Nothing to pull (no data hooks are registered): every partition is synced."""
        self.counters.nothing_to_pull += len(self.pending)
        self.pending.clear()
        self._check_ready()

    def ring_changed(self, old: Ring, new: Ring, now: float) -> RingChange:
        """Account for a ring change; returns what this node gained and lost.

        The plan comes from :func:`~peer_ring.core._sync._planning.plan_ring_change`; this
        method only applies it. Readiness is checked again afterwards: a partition that
        was still pending when the node lost it is no longer waited for.
        """
        if not self.started:
            return RingChange(frozenset(), frozenset())
        plan = plan_ring_change(old, new, self.me, self.replication, self.replicated, self.held)
        for p in plan.reclaimed:
            self.held.pop(p, None)  # held data is merged with what is pulled
        for p, holders in plan.gained.items():
            self.pending[p] = _Pull(now, now, holders)
        for p in plan.lost:
            # A partition lost while still pending may have accepted writes: it is handed
            # off like a complete one (the receivers only pull what differs).
            self.pending.pop(p, None)
            self.held[p] = _Held(now, now + self.handoff_delay, True)
        self.replicated = plan.replicated
        self.counters.gained += len(plan.gained)
        self.counters.lost += len(plan.lost)
        self._check_ready()
        return RingChange(frozenset(plan.gained), plan.lost)

    def note_stray(self, partition: int, now: float) -> bool:
        """Data arrived for a partition this node neither replicates nor holds.

        It is held so that it gets handed off to the partition's replicas and dropped,
        instead of lingering unseen. Returns True when the partition became held.
        """
        if partition in self.replicated or partition in self.held or not self.started:
            return False
        self.held[partition] = _Held(now, now + self.handoff_delay, False)
        self.counters.stray += 1
        return True

    # -- pulls -----------------------------------------------------------------------------

    def due_pulls(self, now: float, limit: int) -> list[int]:
        """Pending partitions whose next attempt is due, at most ``limit``."""
        out = []
        for p, pull in self.pending.items():
            if pull.next_at <= now:
                out.append(p)
                if len(out) >= limit:
                    break
        return out

    def holders(self, partition: int) -> tuple[str, ...]:
        """Nodes that replicated a pending partition before this node gained it."""
        pull = self.pending.get(partition)
        return pull.holders if pull is not None else ()

    def pending_for(self, partition: int, now: float) -> float:
        """Seconds ``partition`` has been pending (0 when it is not)."""
        pull = self.pending.get(partition)
        return now - pull.since if pull is not None else 0.0

    def pull_result(
        self, partition: int, outcome: PullOutcome, now: float, epoch: int | None = None
    ) -> None:
        """Record the outcome of a pull attempt (ignored if no longer pending).

        Args:
            partition: the partition.
            outcome: how the attempt ended.
            now: the current time.
            epoch: :attr:`epoch` when the attempt started (None: unknown).
        """
        pull = self.pending.get(partition)
        if pull is None:
            return
        if outcome is PullOutcome.RETRY:
            pull.attempts += 1
            self.counters.retries += 1
            if epoch is not None and epoch != self.epoch:
                pull.next_at = now
            else:
                delay = min(self.retry_initial * 2 ** (pull.attempts - 1), self.retry_max)
                pull.next_at = now + delay
            return
        del self.pending[partition]
        if outcome is PullOutcome.SYNCED:
            self.counters.synced += 1
        elif outcome is PullOutcome.NOTHING:
            self.counters.nothing_to_pull += 1
        else:
            self.counters.given_up += 1
        self._check_ready()

    def retry_now(self, now: float) -> None:
        """A peer became reachable: pending partitions need not wait for their backoff."""
        self.epoch += 1
        for pull in self.pending.values():
            pull.next_at = min(pull.next_at, now)

    # -- handoff ---------------------------------------------------------------------------

    def due_handoffs(self, now: float, limit: int) -> list[int]:
        """Held partitions whose handoff attempt is due, at most ``limit``."""
        out = []
        for p, held in self.held.items():
            if held.next_at <= now:
                out.append(p)
                if len(out) >= limit:
                    break
        return out

    def handoff_result(self, partition: int, confirmed: bool, now: float) -> bool:
        """Record a handoff attempt; True when the partition must now be dropped.

        Args:
            confirmed: every current replica confirmed it holds our records.
        """
        held = self.held.get(partition)
        if held is None:
            return False
        if confirmed:
            del self.held[partition]
            self.counters.handed_off += 1
            self.counters.dropped += 1
            return True
        if now - held.since >= self.handoff_retention:
            del self.held[partition]
            self.counters.dropped += 1
            self.counters.dropped_unconfirmed += 1
            logger.warning(
                "partition %d: handoff not confirmed after %.0fs; dropping it anyway",
                partition,
                now - held.since,
            )
            return True
        held.attempts += 1
        held.next_at = now + min(self.retry_initial * 2**held.attempts, self.retry_max * 4)
        return False

    def drop_empty(self, partition: int) -> None:
        """A held partition turned out to hold nothing: forget it without a handoff."""
        if self.held.pop(partition, None) is not None:
            self.counters.dropped += 1

    # -- queries ---------------------------------------------------------------------------

    def state(self, partition: int) -> HoldState:
        """What this node holds of ``partition`` (reported to peers asking for digests).

        Stray data is reported as PENDING (partial): pullers merge it, but it never
        counts as the complete copy that ends a pull.
        """
        if partition in self.pending:
            return HoldState.PENDING
        if partition in self.replicated:
            return HoldState.COMPLETE
        held = self.held.get(partition)
        if held is None:
            return HoldState.NONE
        return HoldState.COMPLETE if held.lost else HoldState.PENDING

    def next_due(self) -> float | None:
        """The earliest time some pull or handoff is due (None when nothing is queued)."""
        times = [p.next_at for p in self.pending.values()]
        times.extend(h.next_at for h in self.held.values())
        return min(times) if times else None

    def _check_ready(self) -> None:
        if not self.ready and self.started and not self.pending:
            self.ready = True
