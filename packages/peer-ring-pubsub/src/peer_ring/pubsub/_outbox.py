"""A node's replication requests, batched per turn of the event loop.

Everything the partitions this node sequences replicate in one turn leaves together, as one
``execute_many`` of APPEND sections (one request per replica peer; the quorum is still
counted per partition, and each section is merged, or refused by the epoch fence, on its
own): the APPENDs that became ready, and the group deltas (delivery records of claims,
acks). A partition's deltas ride in its APPEND section when one leaves in the same turn;
otherwise they are an APPEND section with no entries, which replicas merge exactly as the
groups of any append (and as a GROUP request), under the same fence. Requests between
nodes are what costs most in Python, and group deltas sent on their own were about half of
a 3-node cluster's replication requests.
"""

from __future__ import annotations

import asyncio
import contextlib

from peer_ring.core import PeerRing, PeerRingError
from peer_ring.pubsub._leader_state import GroupItem, Leader, Slot, follow
from peer_ring.pubsub._store import Store
from peer_ring.pubsub._tasks import spawn
from peer_ring.pubsub._wire import APPEND, NAMESPACE, AppendRequest


class Outbox:
    """The per-turn batch of a node's APPEND sections (the base of ``Leaders``)."""

    def __init__(self, node: PeerRing, store: Store, replication: int, quorum: int) -> None:
        self.node = node
        self.store = store
        self.replication = replication
        self.quorum = quorum
        self._outbox: list[tuple[Leader, Slot]] = []
        self._group_items: dict[int, GroupItem] = {}  # by id(leader)
        self._flush_scheduled = False
        #: Group deltas that rode on an APPEND with entries leaving in the same turn.
        self.folded = 0
        #: Ack deltas that waited for the APPEND in flight (see ``Leader.deferred``).
        self.deferred = 0

    def sent(self, leader: Leader) -> None:
        """Called once the APPEND sections of ``leader`` in a request have their outcome
        (``Leaders`` completes the slots and sends what waits next)."""

    def queue_slot(self, leader: Leader, slot: Slot) -> None:
        """Send ``slot`` (an APPEND of ``leader``) at the end of this turn."""
        self._outbox.append((leader, slot))
        self._schedule()

    def queued_slot(self, leader: Leader) -> Slot | None:
        """The APPEND of ``leader`` leaving at the end of this turn, if any."""
        if self._flush_scheduled:
            for queued, slot in self._outbox:
                if queued is leader:
                    return slot
        return None

    def queue_groups(self, leader: Leader) -> GroupItem:
        """This turn's group deltas of ``leader`` (made on first use), sent at its end."""
        item = self._group_items.get(id(leader))
        if item is None:
            item = self._group_items[id(leader)] = GroupItem(leader)
            self._schedule()
        return item

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        slots, self._outbox = self._outbox, []
        items, self._group_items = self._group_items, {}
        for leader, slot in slots:
            slot.sent = True
            item = items.pop(id(leader), None)
            deferred, leader.deferred = leader.deferred, None
            if deferred is not None:  # acks that waited for this partition's next request
                if item is None:
                    item = deferred
                else:
                    item.absorb(deferred)
            if item is not None:  # the partition's deltas ride in its APPEND section
                slot.groups.extend(item.groups.items())
                follow(slot.on_commit(), item.done)
        for item in items.values():
            deferred, item.leader.deferred = item.leader.deferred, None
            if deferred is not None:
                item.absorb(deferred)
        if slots or items:
            spawn(self._send_batch(slots, list(items.values())))

    async def _send_batch(self, slots: list[tuple[Leader, Slot]], items: list[GroupItem]) -> None:
        sections = []
        with contextlib.ExitStack() as own:
            for leader, slot in slots:
                entries = [e for e, _ in slot.batch]
                sections.append(
                    (
                        leader,
                        AppendRequest(
                            leader.config,
                            leader.ballot,
                            leader.start,
                            leader.commit,
                            entries,
                            slot.groups,
                        ),
                    )
                )
            for item in items:
                leader = item.leader
                sections.append(
                    (
                        leader,
                        AppendRequest(
                            leader.config,
                            leader.ballot,
                            leader.start,
                            leader.commit,
                            [],
                            list(item.groups.items()),
                        ),
                    )
                )
            payloads = []
            for leader, req in sections:
                payload = req.encode()
                own.enter_context(self.store.own_append(payload, req))
                payloads.append((leader.key, payload))
            outcomes: list[BaseException | None]
            # Only multi-copy (durable) topics get here, and they all have (N, W).
            try:
                if len(payloads) == 1:
                    key, payload = payloads[0]
                    await self.node.execute(
                        NAMESPACE,
                        APPEND,
                        key,
                        payload,
                        replication=self.replication,
                        quorum=self.quorum,
                    )
                    outcomes = [None]
                else:
                    results = await self.node.execute_many(
                        NAMESPACE,
                        APPEND,
                        payloads,
                        replication=self.replication,
                        quorum=self.quorum,
                    )
                    outcomes = [r.error for r in results]
            except PeerRingError as exc:  # the node stopped, or the one section failed
                outcomes = [exc] * len(payloads)
        for (_, slot), outcome in zip(slots, outcomes, strict=False):
            slot.ok, slot.error = outcome is None, outcome
        for item, outcome in zip(items, outcomes[len(slots) :], strict=True):
            if item.done.done():
                continue
            if outcome is None:
                item.done.set_result(None)
            else:
                item.done.set_exception(outcome)
        for leader in {id(leader): leader for leader, _ in slots}.values():
            self.sent(leader)
