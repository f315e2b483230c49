"""The per-partition state of a sequencer: its :class:`Leader`, the append batches in
flight (:class:`Slot`) and the group long-polls waiting on it (:class:`Parked`)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._errors import PayloadTooLargeError
from peer_ring.pubsub._group import GroupState
from peer_ring.pubsub._log import Ballot, Entry
from peer_ring.pubsub._wire import FetchReply, FetchRequest, OutgoingMessage


@dataclass(slots=True)
class Slot:
    """One batch of appends in flight; ``ok`` is None until its replication finished.

    ``groups`` are delivery records riding on the append (see :class:`Parked`);
    ``committed`` (made on first use) ends when the batch is on W replicas, or fails.
    """

    batch: list[tuple[Entry, asyncio.Future[Entry]]]
    ok: bool | None = None
    error: BaseException | None = None
    groups: list[tuple[str, GroupState]] = field(default_factory=list)
    committed: asyncio.Future[None] | None = None
    size: int = 0  # payload bytes of ``batch``
    #: False until the APPEND is handed to the transport: until then (the rest of the
    #: turn that made it) later publishes join it instead of waiting for its round.
    sent: bool = False

    def fill(
        self, queue: list[tuple[Entry, asyncio.Future[Entry]]], most: int, most_bytes: int
    ) -> None:
        """Move the oldest queued entries into the batch, up to ``most`` entries or about
        ``most_bytes`` (at least one entry in an empty batch)."""
        count, size, take = len(self.batch), self.size, 0
        for entry, _ in queue:
            if count == most or (count and size >= most_bytes):
                break
            count += 1
            size += entry.size
            take += 1
        if take:
            self.batch.extend(queue[:take])
            del queue[:take]
            self.size = size

    def on_commit(self) -> asyncio.Future[None]:
        """:attr:`committed`, made on first use."""
        if self.committed is None:
            self.committed = asyncio.get_running_loop().create_future()
            # Its failure is also reported to whoever waits on it; a waiter that went away
            # (a cancelled long-poll) must not leave it "never retrieved".
            self.committed.add_done_callback(_retrieve)
        return self.committed


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


class GroupItem:
    """Group deltas of one partition waiting to be replicated without entries of their own:
    they travel as an APPEND section with no entries (or join the partition's APPEND when
    one leaves in the same turn); ``done`` ends once W replicas hold them, or fails."""

    __slots__ = ("done", "groups", "leader", "release_at")

    def __init__(self, leader: Leader) -> None:
        self.leader = leader
        #: When held (``Leader.deferred``): the monotonic time it leaves at the latest.
        self.release_at = float("inf")
        #: One joined delta per group (group state is a join-semilattice).
        self.groups: dict[str, GroupState] = {}
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done.add_done_callback(_retrieve)

    def add(self, group: str, delta: GroupState) -> None:
        """Join ``delta`` into this item's delta of ``group`` (``delta`` is not kept)."""
        joined = self.groups.get(group)
        if joined is None:
            joined = self.groups[group] = GroupState()
        joined.merge(delta)

    def absorb(self, other: GroupItem) -> None:
        """Take ``other``'s deltas; ``other.done`` ends when this item's does."""
        for group, delta in other.groups.items():
            self.add(group, delta)
        follow(self.done, other.done)


def follow(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    """End ``target`` as ``source`` ends (result or exception)."""

    def copy(fut: asyncio.Future[None]) -> None:
        if target.done():
            return
        if fut.cancelled():
            target.cancel()
        elif fut.exception() is not None:
            target.set_exception(fut.exception())  # type: ignore[arg-type]
        else:
            target.set_result(None)

    source.add_done_callback(copy)


@dataclass(slots=True, eq=False)
class Parked:
    """A group long-poll waiting on a partition for new messages.

    When the sequencer sends the partition's next APPEND while it waits, it claims the
    new messages for it then (:attr:`Leaders.piggyback`) and sends the delivery records
    with the APPEND; ``reply`` is the answer to hand out once ``committed`` ends.
    """

    req: FetchRequest
    wake: asyncio.Future[None]
    reply: FetchReply | None = None
    committed: asyncio.Future[None] | None = None


@dataclass(slots=True)
class Leader:
    """This node's sequencer state for one partition (valid until it steps down)."""

    key: bytes
    config: TopicConfig
    ballot: Ballot
    start: int
    next: int
    commit: int
    preference: tuple[str, ...]
    queue: list[tuple[Entry, asyncio.Future[Entry]]] = field(default_factory=list)
    inflight: dict[str, asyncio.Future[Entry]] = field(default_factory=dict)
    slots: deque[Slot] = field(default_factory=deque)
    active: bool = True
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    checked: object = None  # the ring this leader was last found to head the list in
    #: Time of the last entry assigned: new entries are never stamped below it, so entry
    #: times are non-decreasing along the log even across sequencers with skewed clocks.
    last_time: float = float("-inf")
    #: Bumped by every notify(): a long-poll over several partitions compares it before
    #: and after a pass to see a change it would otherwise miss while it was awaiting.
    version: int = 0
    #: Futures of multi-partition long-polls, resolved by the next notify().
    waiters: set[asyncio.Future[None]] = field(default_factory=set)
    #: Group long-polls waiting here (see Parked).
    parked: list[Parked] = field(default_factory=list)
    #: Ack deltas waiting for the APPEND in flight to finish: they leave with the next
    #: APPEND (or, with nothing to append, as an APPEND section of their own) in the turn
    #: it finishes, instead of a request of their own now (see Leaders.replicate_group_begin).
    deferred: GroupItem | None = None

    def stamp(self, now: float) -> float:
        """The time of a new entry: ``now``, or the previous entry's when this clock is
        behind an earlier sequencer's (times never decrease along the log)."""
        if now < self.last_time:
            now = self.last_time
        self.last_time = now
        return now

    def notify(self) -> None:
        """Wake every long-poll waiting on this partition."""
        self.changed.set()
        self.changed = asyncio.Event()
        self.version += 1
        if self.waiters:
            for fut in self.waiters:
                if not fut.done():
                    fut.set_result(None)
            self.waiters.clear()


def check_size(m: OutgoingMessage, config: TopicConfig) -> None:
    """Raise ``PayloadTooLargeError`` when ``m`` exceeds the topic's ``max_message_bytes``."""
    size = len(m.data) + len(m.key) + len(m.msg_id)
    if size > config.max_message_bytes:
        raise PayloadTooLargeError(
            f"message of {size} bytes exceeds max_message_bytes={config.max_message_bytes}"
        )
