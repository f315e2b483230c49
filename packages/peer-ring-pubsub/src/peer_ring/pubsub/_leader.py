"""The sequencer of a topic partition, run by one of its replicas (see :mod:`._placement`).

One :class:`Leader` per partition this node sequences. It is created by a takeover
(:mod:`._sequencer`: learn and promise from R = N - W + 1 replicas, adopt, re-replicate),
then assigns sequences and replicates appends in batches (``PIPELINE`` in flight per
partition; what arrives meanwhile forms the next batch; the commit point moves over a
contiguous prefix of completed batches, a failed batch fails every later one). A failed
replication, a refused append or a ring change steps it down (the next request runs a
new takeover with a higher epoch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from peer_ring.core import PeerRing, PeerRingError
from peer_ring.pubsub._codec import Reader
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._errors import (
    NotSequencerError,
    PartitionUnavailableError,
    PublishError,
)
from peer_ring.pubsub._group import GroupState
from peer_ring.pubsub._leader_state import GroupItem, Leader, Slot, check_size
from peer_ring.pubsub._log import MESSAGE, Ballot, Entry
from peer_ring.pubsub._outbox import Outbox
from peer_ring.pubsub._placement import Placement
from peer_ring.pubsub._sequencer import ReplicaStatus, adopt, learn_quorum, takeover_range
from peer_ring.pubsub._store import RefusedError, Store
from peer_ring.pubsub._tasks import spawn
from peer_ring.pubsub._wire import (
    APPEND,
    GROUP,
    NAMESPACE,
    PROMISE,
    RANGE,
    STATUS,
    AppendRequest,
    GroupRequest,
    OutgoingMessage,
    ReplicaStatusReply,
    decode_entries_reply,
    encode_config_ballot,
    encode_range,
)

logger = logging.getLogger(__name__)

MAX_BATCH = 512
MAX_BATCH_BYTES = 1024 * 1024  # an APPEND stays well under the transport's message limit
# APPENDs in flight per partition (the mechanism allows more; one batches best: see
# _client._PIPELINE).
PIPELINE = 1
_RANGE_PAGE = 1024
#: The longest an ack may wait for its partition's next replication request (the client
#: asks for less: see _subscription.NOWAIT_HOLD).
MAX_ACK_HOLD = 0.05


class Leaders(Outbox):
    """The partitions this node sequences, their takeovers and their appends."""

    def __init__(
        self, node: PeerRing, store: Store, replication: int, quorum: int, placement: Placement
    ) -> None:
        super().__init__(node, store, replication, quorum)
        self.placement = placement
        self.leaders: dict[bytes, Leader] = {}
        self._elections: dict[bytes, asyncio.Future[Leader]] = {}
        self.takeovers = 0
        self.step_downs = 0
        self.on_step_down: Callable[[bytes], None] = lambda key: None
        #: Set by the service: claims for the parked long-polls of a leader whose APPEND
        #: is about to leave, adding their delivery records to the slot.
        self.piggyback: Callable[[Leader, Slot], None] | None = None

    def copies(self, config: TopicConfig) -> tuple[int, int]:
        """``(replication, quorum)`` of a topic's partitions: (1, 1) when not durable."""
        return (self.replication, self.quorum) if config.durable else (1, 1)

    # ------------------------------------------------------------ leadership
    def _check_head(self, key: bytes, config: TopicConfig) -> tuple[str, ...]:
        prefs = self.node.preference_list(key, self.replication)
        self.placement.declare_key(key, config)
        head = self.placement.sequencer(key)
        if not prefs or head != self.node.address:
            raise NotSequencerError(
                f"{self.node.address} is not the sequencer ({head or 'nobody'} is)"
            )
        if not self.node.partition_ready(self.node.partition_for_key(key)):
            raise PartitionUnavailableError(
                f"{self.node.address} is still pulling this partition; retry shortly"
            )
        return prefs

    async def get(self, key: bytes, config: TopicConfig) -> Leader:
        """This node's leader for ``key``, running a takeover when there is none."""
        leader = self.active(key, config)
        if leader is not None:
            return leader
        prefs = self._check_head(key, config)
        pending = self._elections.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._takeover(key, config, prefs))
            self._elections[key] = pending
            pending.add_done_callback(lambda _: self._elections.pop(key, None))
        return await asyncio.shield(pending)

    def active(self, key: bytes, config: TopicConfig) -> Leader | None:
        """This node's active leader for ``key``, checked against the current ring (what
        :meth:`get` returns without waiting), else None. Raises what a takeover's check
        raises when the ring no longer makes this node the partition's head."""
        leader = self.leaders.get(key)
        if leader is None or not leader.active:
            return None
        ring = self.node.ring
        if leader.checked is not ring:
            # Checked once per ring (a ring change that moves the partition steps the
            # leader down, see PubSub._on_ownership).
            self._check_head(key, config)
            leader.checked = ring
        if config != leader.config:
            leader.config = config
        return leader

    def step_down(self, key: bytes, reason: str, only: Leader | None = None) -> None:
        """Stop sequencing ``key``; queued publishes fail with a retryable error.

        With ``only``, step down only if that leader is still the current one (a late
        failure of an older leader must not stop its successor).
        """
        current = self.leaders.get(key)
        if current is None or (only is not None and current is not only):
            if only is not None:
                only.active = False
            return
        leader = self.leaders.pop(key)
        leader.active = False
        self.step_downs += 1
        logger.info("pubsub: %s steps down as sequencer of %r: %s", self.node.address, key, reason)
        err = NotSequencerError(f"sequencer stepped down: {reason}")
        for _, fut in leader.queue:
            if not fut.done():
                fut.set_exception(err)
        leader.queue.clear()
        self._release(leader)  # deferred acks leave now (their outcome says what happened)
        leader.notify()
        self.on_step_down(key)

    def step_down_all(self, keys: set[bytes] | None = None, reason: str = "ring change") -> None:
        """Step down for ``keys`` (every partition when None)."""
        for key in list(self.leaders):
            if keys is None or key in keys:
                self.step_down(key, reason)

    async def _takeover(self, key: bytes, config: TopicConfig, prefs: tuple[str, ...]) -> Leader:
        node = self.node
        state = self.store.state(key, config)
        log = state.log
        replication, quorum = self.copies(config)
        learn = learn_quorum(replication, quorum)
        last_error: BaseException | None = None
        for attempt in range(4):
            try:
                res = await node.execute(
                    NAMESPACE,
                    STATUS,
                    key,
                    encode_config_ballot(config, Ballot()),
                    replication=replication,
                    quorum=learn,
                )
                seen = max(
                    [log.max_epoch] + [ReplicaStatusReply.decode(p).max_epoch for p in res.payloads]
                )
                epoch = seen + 1 + attempt
                if not config.durable:  # nothing to learn from: keep epochs unique by time
                    epoch = max(epoch, int(node.clock.time() * 1000))
                ballot = Ballot(epoch, node.address)
                res = await node.execute(
                    NAMESPACE,
                    PROMISE,
                    key,
                    encode_config_ballot(config, ballot),
                    replication=replication,
                    quorum=learn,
                )
            except PeerRingError as exc:
                last_error = exc
                await node.clock.sleep(0.05 * (attempt + 1))
                continue
            replies = [(r.node, ReplicaStatusReply.decode(r.payload)) for r in res.ok_replies]
            if log.promised != ballot:  # a newer ballot reached our own replica meanwhile
                last_error = PartitionUnavailableError("a newer sequencer appeared")
                continue
            try:
                return await self._adopt(key, config, ballot, prefs, replies)
            except PeerRingError as exc:
                if isinstance(exc, PartitionUnavailableError):
                    raise
                raise PartitionUnavailableError(f"sequencer takeover failed: {exc}") from exc
        raise PartitionUnavailableError(f"sequencer takeover failed: {last_error}")

    async def _adopt(
        self,
        key: bytes,
        config: TopicConfig,
        ballot: Ballot,
        prefs: tuple[str, ...],
        replies: list[tuple[str, ReplicaStatusReply]],
    ) -> Leader:
        state = self.store.state(key, config)
        log = state.log
        statuses = []
        for _, reply in replies:
            for epoch, start in reply.epoch_starts.items():
                log.start_epoch(epoch, start)
            log.note_commit(reply.commit)
            for name, group in reply.groups.items():
                state.merge_group(name, group)
            statuses.append(ReplicaStatus(reply.last, reply.first, reply.commit))
        _, last = takeover_range(statuses)
        await self._fetch_missing(key, config, last, replies)
        now = self.node.clock.time()
        tail = adopt(log, ballot, last, now)
        monotonic = self.node.clock.monotonic()

        def is_message(seq: int) -> bool:
            return log.entries.kind(seq) == MESSAGE

        for name, group in state.groups.items():
            group.restart_deadlines(monotonic)
            orphans = group.adopt_orphans(monotonic, is_message)
            if orphans:
                logger.warning(
                    "pubsub: group %r of %r: %d deliveries were lost with their replicas; "
                    "those messages will be redelivered",
                    name,
                    key,
                    orphans,
                )
        leader = Leader(key, config, ballot, last + 1, last + 1, last, prefs)
        leader.last_time = log.last_time()
        # Re-replicate the adopted tail (and the epoch start) before serving anything.
        for i in range(0, max(len(tail), 1), MAX_BATCH):
            await self._replicate(leader, tail[i : i + MAX_BATCH])
        for name, group in state.groups.items():
            await self._replicate_group(leader, name, group.copy())
        log.note_commit(last)
        self.leaders[key] = leader
        self.takeovers += 1
        logger.info(
            "pubsub: %s sequences %r at epoch %d from sequence %d",
            self.node.address,
            key,
            ballot.epoch,
            last + 1,
        )
        return leader

    async def _fetch_missing(
        self,
        key: bytes,
        config: TopicConfig,
        last: int,
        replies: list[tuple[str, ReplicaStatusReply]],
    ) -> None:
        log = self.store.state(key, config).log
        for peer, reply in sorted(replies, key=lambda r: -r[1].last):
            if peer == self.node.address:
                continue
            while True:
                missing = next(
                    (
                        s
                        for s in range(log.first, min(last, reply.last) + 1)
                        if s not in log.entries
                    ),
                    None,
                )
                if missing is None:
                    break
                payload = await self.node.call(
                    peer, NAMESPACE, RANGE, key, encode_range(config, missing, last, _RANGE_PAGE)
                )
                first, starts, entries = decode_entries_reply(Reader(payload))
                for epoch, start in starts.items():
                    log.start_epoch(epoch, start)
                log.advance_first(first)
                added = [e for e in entries if log.add(e)]
                if not entries or (not added and entries[-1].seq >= min(last, reply.last)):
                    break

    # --------------------------------------------------------------- appends
    async def publish(
        self, key: bytes, config: TopicConfig, messages: list[OutgoingMessage]
    ) -> list[tuple[Entry, bool]]:
        """Append ``messages`` (deduplicated by msg_id) and wait until W replicas hold them."""
        if len(messages) == 1 and not messages[0].msg_id and self.copies(config)[0] == 1:
            # The N=1 local publish: no dedup, no shield (nobody else waits), no lists.
            cached = self.cached(key, config)
            if cached is not None:
                return [(await self._enqueue_one(cached, config, messages[0]), False)]
        leader = await self.get(key, config)
        waits, shared = self._enqueue(leader, key, config, messages)
        return await self._settled(config, waits, shared)

    def publish_begin(
        self, key: bytes, config: TopicConfig, messages: list[OutgoingMessage]
    ) -> Coroutine[Any, Any, list[tuple[Entry, bool]]] | None:
        """The first half of :meth:`publish`, done now when this node's leader for ``key``
        is cached: the messages take their sequences before this returns, so requests
        served one after the other keep their order whatever else they carry. Returns the
        wait for W replicas; None when the leader must be looked up (use :meth:`publish`).
        Raises what :meth:`publish` raises for a bad message."""
        leader = self.active(key, config)
        if leader is None:
            return None
        waits, shared = self._enqueue(leader, key, config, messages)
        return self._settled(config, waits, shared)

    def _enqueue(
        self, leader: Leader, key: bytes, config: TopicConfig, messages: list[OutgoingMessage]
    ) -> tuple[list[tuple[asyncio.Future[Entry], bool]], bool]:
        """Give ``messages`` their sequences on ``leader`` (deduplicated by msg_id) and
        start their append; the futures, and whether another caller may share them."""
        log = self.store.state(key, config).log
        waits: list[tuple[asyncio.Future[Entry], bool]] = []
        now = leader.stamp(self.node.clock.time())
        loop = asyncio.get_running_loop()
        for m in messages:
            check_size(m, config)
        shared = False  # a future another caller may wait on (same msg_id)
        for m in messages:
            if m.msg_id:
                shared = True
                known = leader.inflight.get(m.msg_id)
                if known is not None:
                    waits.append((known, True))
                    continue
                record = log.lookup(m.msg_id)
                if record is not None and record.seq <= leader.commit:
                    done: asyncio.Future[Entry] = loop.create_future()
                    entry = log.get(record.seq) or Entry(
                        record.epoch, record.seq, record.time, m.msg_id, m.key, b""
                    )
                    done.set_result(entry)
                    waits.append((done, True))
                    continue
            entry = Entry(leader.ballot.epoch, leader.next, now, m.msg_id, m.key, m.data)
            leader.next += 1
            fut: asyncio.Future[Entry] = loop.create_future()
            leader.queue.append((entry, fut))
            if m.msg_id:
                leader.inflight[m.msg_id] = fut
            waits.append((fut, False))
        self._kick(leader)
        return waits, shared

    async def _settled(
        self,
        config: TopicConfig,
        waits: list[tuple[asyncio.Future[Entry], bool]],
        shared: bool,
    ) -> list[tuple[Entry, bool]]:
        """Wait until the appends of :meth:`_enqueue` hold on W replicas."""
        # Batches complete in sequence order (a failed one fails every later one), so once
        # the last new message is settled every earlier one is too: one wait per call.
        own = [fut for fut, duplicate in waits if not duplicate]
        if own:
            with contextlib.suppress(Exception):
                if shared or self.copies(config)[0] > 1:
                    await asyncio.shield(own[-1])
                else:
                    # One copy (N=1) and nobody else waits on these futures (no msg_id):
                    # awaiting directly resumes the caller a loop turn sooner, which on a
                    # CPU-bound single node cut CPU per message by about a third. With
                    # replicas the later resume batches the next APPEND better (fewer
                    # requests), so the shield stays. A cancelled caller may cancel the
                    # futures: the batch skips done ones.
                    await own[-1]
        out = []
        for fut, duplicate in waits:
            out.append((fut.result() if fut.done() else await asyncio.shield(fut), duplicate))
        return out

    def _enqueue_one(
        self, leader: Leader, config: TopicConfig, m: OutgoingMessage
    ) -> asyncio.Future[Entry]:
        """Queue one message without msg_id (:meth:`publish`'s checks and stamping)."""
        check_size(m, config)
        now = leader.stamp(self.node.clock.time())
        entry = Entry(leader.ballot.epoch, leader.next, now, "", m.key, m.data)
        leader.next += 1
        fut: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        leader.queue.append((entry, fut))
        self._kick(leader)
        return fut

    def _kick(self, leader: Leader) -> None:
        # Up to PIPELINE appends in flight per partition (the commit point only moves over
        # completed batches, see _complete); one copy (N=1): local, CPU-bound, one at a time.
        limit = PIPELINE if self.copies(leader.config)[0] > 1 else 1
        while leader.queue and leader.active:
            if len(leader.slots) >= limit:
                # Publishes of the turn that made the last APPEND join it while it has not
                # left (publishers woken together: else a batch of one, then the rest).
                if not leader.slots[-1].sent:
                    leader.slots[-1].fill(leader.queue, MAX_BATCH, MAX_BATCH_BYTES)
                break
            slot = Slot([])
            slot.fill(leader.queue, MAX_BATCH, MAX_BATCH_BYTES)
            leader.slots.append(slot)
            if self.copies(leader.config)[0] == 1:  # one copy: a local merge (or a call)
                spawn(self._send(leader, slot))
                continue
            if (
                leader.parked
                and self.piggyback is not None
                and len(leader.slots) == 1
                and slot.batch[0][0].seq == leader.commit + 1
            ):
                # A consumer waits: its delivery records ride on this APPEND (one round
                # trip to W replicas instead of two; see the README's design section).
                self.piggyback(leader, slot)
            # Appends of every partition that became ready in this turn of the event loop
            # leave together, with the turn's group deltas (see _outbox.py).
            self.queue_slot(leader, slot)

    def sent(self, leader: Leader) -> None:
        """Outbox: ``leader``'s APPEND has its outcome; the next one may leave."""
        self._complete(leader)
        self._kick(leader)
        self._release(leader)

    def _release(self, leader: Leader) -> None:
        """Send the ack deltas that waited for ``leader``'s APPEND in flight, in this turn
        (with the next APPEND when one leaves, else as a section of their own)."""
        item = leader.deferred
        if item is not None:
            leader.deferred = None
            self.queue_groups(leader).absorb(item)

    def _hold_ended(self, leader: Leader, item: GroupItem) -> None:
        if leader.deferred is item:
            self._release(leader)

    async def _send(self, leader: Leader, slot: Slot) -> None:
        slot.sent = True
        try:
            await self._replicate(leader, [e for e, _ in slot.batch], slot.groups)
            slot.ok = True
        except PeerRingError as exc:
            slot.ok = False
            slot.error = exc
        self._complete(leader)
        self._kick(leader)

    def _complete(self, leader: Leader) -> None:
        log = self.store.state(leader.key, leader.config).log
        committed = False
        while leader.slots and leader.slots[0].ok is not None:
            slot = leader.slots.popleft()
            if not slot.ok:
                self._fail(leader, slot)
                return
            leader.commit = slot.batch[-1][0].seq
            log.note_commit(leader.commit)
            if slot.committed is not None and not slot.committed.done():
                slot.committed.set_result(None)
            for entry, fut in slot.batch:
                leader.inflight.pop(entry.msg_id, None)
                if not fut.done():
                    fut.set_result(entry)
            committed = True
        if committed:
            leader.notify()

    def _fail(self, leader: Leader, slot: Slot) -> None:
        # Everything after a failed batch fails too (the commit point cannot pass it).
        err = PublishError(
            f"not acknowledged by {self.quorum} replicas ({slot.error}); retry with the same msg_id"
        )
        for failed in [slot, *leader.slots]:
            if failed.committed is not None and not failed.committed.done():
                failed.committed.set_exception(
                    PartitionUnavailableError(f"append not replicated: {slot.error}")
                )
            for entry, fut in failed.batch:
                leader.inflight.pop(entry.msg_id, None)
                if not fut.done():
                    fut.set_exception(err)
        leader.slots.clear()
        self.step_down(leader.key, f"replication failed: {slot.error}", only=leader)

    def _single_local(self, leader: Leader) -> bool:
        """True when this node holds the partition's only copy (N = 1, or not durable):
        replication is then a local merge, without encoding anything."""
        if self.copies(leader.config)[0] != 1:
            return False
        return self.node.preference_list(leader.key, 1) == (self.node.address,)

    async def _replicate(
        self,
        leader: Leader,
        entries: list[Entry],
        groups: list[tuple[str, GroupState]] | None = None,
    ) -> None:
        req = AppendRequest(
            leader.config, leader.ballot, leader.start, leader.commit, entries, groups or []
        )
        if self._single_local(leader):
            self.store.apply_append(leader.key, req)
            return
        payload = req.encode()
        with self.store.own_append(payload, req):
            await self.node.execute(
                NAMESPACE,
                APPEND,
                leader.key,
                payload,
                replication=self.copies(leader.config)[0],
                quorum=self.copies(leader.config)[1],
            )

    async def _replicate_group(self, leader: Leader, group: str, delta: GroupState) -> None:
        req = GroupRequest(leader.config, leader.ballot.epoch, group, delta)
        if self._single_local(leader):
            self.store.apply_group(leader.key, req)
            return
        await self.node.execute(
            NAMESPACE,
            GROUP,
            leader.key,
            req.encode(),
            replication=self.copies(leader.config)[0],
            quorum=self.copies(leader.config)[1],
        )

    async def replicate_group(
        self, leader: Leader, group: str, delta: GroupState, *, hold: float = 0.0
    ) -> None:
        """Merge ``delta`` here at once, then wait until W replicas hold it.

        ``hold`` (acks of ``ack_nowait``: nobody waits on them) lets the delta wait up to
        that many seconds (at most ``MAX_ACK_HOLD``) for the partition's next replication
        request (its next APPEND, a claim's delivery records, the end of the APPEND in
        flight) instead of making a request of its own now.

        Raises:
            PartitionUnavailableError: replication failed (the sequencer stepped down; the
                change is not reported as done).
        """
        wait = self.replicate_group_begin(leader, group, delta, hold=hold)
        if wait is not None:
            await wait

    def replicate_group_begin(
        self, leader: Leader, group: str, delta: GroupState, *, hold: float = 0.0
    ) -> Awaitable[None] | None:
        """:meth:`replicate_group` without waiting: merges ``delta`` here and queues its
        replication (see :meth:`replicate_group` for ``hold``); returns what to await for
        W replicas (None: nothing to wait for). The caller must await what it gets.

        Raises:
            PartitionUnavailableError: refused here (the sequencer stepped down).
        """
        state = self.store.state(leader.key, leader.config)
        state.merge_group(group, delta)
        try:
            if self._single_local(leader):  # merged above: only the fencing check remains
                if not state.log.accepts(leader.ballot.epoch):
                    raise RefusedError(f"epoch {state.log.promised.epoch} was promised since")
                self.store.on_change(leader.key)
                return None
            if self.copies(leader.config)[0] == 1:  # one copy, not here any more
                return self._group_done(leader, self._replicate_group(leader, group, delta))
            slot = self.queued_slot(leader)
            if slot is not None:
                # This partition's APPEND leaves at the end of this turn: the delta rides
                # on it (replicas merge an append's groups as a GROUP's, same fence; it
                # commits once W replicas hold both).
                slot.groups.append((group, delta))
                self.folded += 1
                return self._group_done(leader, asyncio.shield(slot.on_commit()))
            if hold > 0 and leader.active:
                # Wait for the partition's next request (see replicate_group), at most
                # `hold` seconds, rather than making a request of its own now.
                held = leader.deferred
                if held is None:
                    held = leader.deferred = GroupItem(leader)
                now = self.node.clock.monotonic()
                hold = min(hold, MAX_ACK_HOLD)
                if now + hold < held.release_at:
                    held.release_at = now + hold
                    ending = held
                    self.node.clock.call_later(hold, lambda: self._hold_ended(leader, ending))
                held.add(group, delta)
                self.deferred += 1
                return self._group_done(leader, asyncio.shield(held.done))
            # An APPEND section of its own, in this turn's batch (with every other
            # partition's appends and deltas of the turn).
            item = self.queue_groups(leader)
            item.add(group, delta)
            return self._group_done(leader, asyncio.shield(item.done))
        except PeerRingError as exc:
            self.step_down(leader.key, f"group replication failed: {exc}", only=leader)
            raise PartitionUnavailableError(f"group state not replicated: {exc}") from exc

    async def _group_done(self, leader: Leader, wait: Awaitable[None]) -> None:
        try:
            await wait
        except PeerRingError as exc:
            self.step_down(leader.key, f"group replication failed: {exc}", only=leader)
            raise PartitionUnavailableError(f"group state not replicated: {exc}") from exc

    def cached(self, key: bytes, config: TopicConfig) -> Leader | None:
        """This node's leader for ``key`` when :meth:`get` would return it at once (active,
        checked against the current ring, same config), else None."""
        leader = self.leaders.get(key)
        if (
            leader is not None
            and leader.active
            and leader.checked is self.node.ring
            and leader.config == config
        ):
            return leader
        return None
