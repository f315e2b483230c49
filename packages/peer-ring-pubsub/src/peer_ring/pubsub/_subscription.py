"""Subscriptions: competing consumers of a group, or broadcast readers.

A subscription runs one long-poll loop per topic partition against the partition's
sequencer (FETCH through ``call``; the loops of partitions one remote peer sequences share
one FETCH_MANY request, see :mod:`._fetch_batch`). Messages wait in a local queue bounded by
``max_in_flight``: a loop only asks for as many messages as there is room for, so a slow
application holds at most ``max_in_flight`` messages and never slows other groups (each
group's progress is its own state on the sequencer).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from peer_ring.pubsub._codec import Reader
from peer_ring.pubsub._errors import (
    InvalidOptionError,
    OffsetOutOfRangeError,
    PubSubError,
    SubscriptionClosedError,
)
from peer_ring.pubsub._fetch_batch import FetchBatcher
from peer_ring.pubsub._message import Message, SubscriptionHealth
from peer_ring.pubsub._tasks import spawn
from peer_ring.pubsub._wire import (
    ACK,
    NAMESPACE,
    PROGRESS,
    RELEASE,
    SETTLE,
    SETTLE_MANY,
    FetchRequest,
    SettleRequest,
    decode_section_replies,
    encode_settle_many,
    open_reply,
    ring_key,
)

if TYPE_CHECKING:
    from peer_ring.pubsub._pubsub import Topic

logger = logging.getLogger(__name__)

#: How long one FETCH waits on the sequencer for new messages.
POLL_WAIT = 1.0

_END = object()


def _ignore_reply(r: Reader) -> None:
    r.done()


_ACK_BATCH = 512
#: Sent as an ``ack_nowait`` batch's ``wait``: the sequencer may hold the ack this long for
#: the partition's next replication request (it rides on it instead of making its own).
#: Nobody waits on these acks; an awaited ``ack()`` is never held.
NOWAIT_HOLD = 0.005


def _hold(items: list[tuple[Message, asyncio.Future[None] | None]]) -> float:
    """The ``wait`` of an ack section: NOWAIT_HOLD when every ack of it is an ack_nowait."""
    return NOWAIT_HOLD if all(fut is None for _, fut in items) else 0.0


@dataclass(slots=True)
class _AckBatch:
    # A None future: an ack_nowait(), whose outcome only the subscription's health records.
    items: list[tuple[Message, asyncio.Future[None] | None]] = field(default_factory=list)
    running: bool = False


class Subscription:
    """A subscriber of one topic; use as ``async with topic.subscribe(...) as sub``.

    Iterate it (``async for msg in sub``) to receive messages. In a group, settle each one
    with ``ack()``, ``nak(delay)``, ``in_progress()`` or ``term()``; without a group
    (broadcast) nothing needs settling.
    """

    def __init__(
        self,
        topic: Topic,
        group: str | None,
        *,
        ack_wait: float,
        max_deliver: int,
        max_in_flight: int,
        start: str | int,
        partitions: list[int],
        start_time: float | None = None,
    ) -> None:
        self.topic = topic
        self.group = group
        self.consumer = uuid.uuid4().hex
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.max_in_flight = max_in_flight
        self._start = start
        self._start_time = start_time
        self._partitions = partitions
        self._queue: asyncio.Queue[Message | BaseException | object] = asyncio.Queue()
        self._in_flight = 0  # held messages plus slots reserved by fetches in flight
        self._reserved = 0
        # Held group messages -> local deadline: past its ack_wait a message no longer
        # counts against max_in_flight (the sequencer may redeliver it to anyone).
        self._held: dict[tuple[int, int, int], float] = {}
        self._room = asyncio.Event()
        self._room.set()
        # Loops parked until there is room. A loop back from a fetch lets them go first:
        # otherwise, with fewer slots than partitions, the loop of an idle partition
        # takes the slot its empty long poll just gave back, again and again, and a
        # partition with messages never gets it.
        self._waiting = 0
        self._tasks: list[asyncio.Task[None]] = []
        # FETCHes to one remote sequencer leave together (one long-poll per peer).
        self._fetcher = FetchBatcher(topic.pubsub.client, self._track)
        self._closed = False
        self._ack_batches: dict[str, _AckBatch] = {}  # by sequencer peer
        self._delivered = self._acked = self._redelivered = 0
        self._expired = self._errors = 0
        self._last_error = ""
        self._last_settle = topic.pubsub.node.clock.monotonic()
        # Bound once: every Message refers to these two (not two new objects per message
        # for the garbage collector to track).
        self._settle_fn = self._settle
        self._ack_nowait_fn = self._ack_nowait

    # --------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Subscription:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start the fetch loops (``async with`` does it)."""
        if self._tasks or self._closed:
            return
        # One fetch out per partition. Round 7 kept two for a group (so one is parked when
        # the next APPEND leaves): fewer requests in one process, but more CPU per message
        # and a higher p99 across processes (docs/benchmarks.md, pub-sub round 8).
        for partition in self._partitions:
            self._tasks.append(asyncio.ensure_future(self._loop(partition)))
        self.topic.pubsub._subscriptions.add(self)

    def _track(self, task: asyncio.Task[None]) -> None:
        # A request of the fetcher: cancelled with the loops, forgotten when done.
        self._tasks.append(task)
        task.add_done_callback(self._untrack)

    def _untrack(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    async def close(self) -> None:
        """Stop fetching; in a group, give unsettled messages back for redelivery now."""
        if self._closed:
            return
        self._closed = True
        self.topic.pubsub._subscriptions.discard(self)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._queue.put_nowait(_END)
        if self.group is not None and self.topic.pubsub.node.running:
            await asyncio.gather(
                *(self._release(p) for p in self._partitions), return_exceptions=True
            )

    async def _release(self, partition: int) -> None:
        req = SettleRequest(self.topic.config, self.group or "", self.consumer, RELEASE, 0.0, [])
        key = ring_key(self.topic.name, partition)
        await self.topic.pubsub.client.run(
            key, SETTLE, req.encode, lambda s: s.settle(key, req), _ignore_reply, timeout=1.0
        )

    # --------------------------------------------------------------- iteration
    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, Message)
        if self.group is None:
            self._free(1)
        return item

    async def next(self, timeout: float | None = None) -> Message | None:
        """The next message, or None after ``timeout`` seconds (of the node's clock)
        without one, or once the subscription is closed."""
        task = asyncio.ensure_future(self.__anext__())
        timer = None
        if timeout is not None:
            timer = self.topic.pubsub.node.clock.call_later(timeout, task.cancel)
        try:
            return await task
        except (asyncio.CancelledError, StopAsyncIteration):
            if task.cancelled() or task.done():
                return None
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def health(self) -> SubscriptionHealth:
        """Counters and a stalled flag (see :class:`SubscriptionHealth`)."""
        idle = self.topic.pubsub.node.clock.monotonic() - self._last_settle
        return SubscriptionHealth(
            topic=self.topic.name,
            group=self.group,
            consumer=self.consumer,
            in_flight=self._in_flight - self._reserved,
            max_in_flight=self.max_in_flight,
            delivered=self._delivered,
            acked=self._acked,
            redelivered=self._redelivered,
            expired=self._expired,
            errors=self._errors,
            last_error=self._last_error,
            stalled=self._in_flight - self._reserved >= self.max_in_flight and idle > self.ack_wait,
        )

    # ------------------------------------------------------------ fetch loops
    def _expire_held(self) -> None:
        now = self.topic.pubsub.node.clock.monotonic()
        for token in [t for t, deadline in self._held.items() if deadline <= now]:
            del self._held[token]
            self._in_flight -= 1
        if self._in_flight < self.max_in_flight:
            self._room.set()

    def _free(self, count: int) -> None:
        self._in_flight -= count
        self._last_settle = self.topic.pubsub.node.clock.monotonic()
        if self._in_flight < self.max_in_flight:
            self._room.set()

    async def _loop(self, partition: int) -> None:
        pubsub = self.topic.pubsub
        clock = pubsub.node.clock
        key = ring_key(self.topic.name, partition)
        position = self._initial_position()
        seek = self._start_time  # sent until a fetch succeeded (it placed position/group)
        per_fetch = max(1, self.max_in_flight // max(1, len(self._partitions)))
        while not self._closed:
            self._expire_held()
            room = self.max_in_flight - self._in_flight
            if room <= 0:
                self._room.clear()
                waker = clock.call_later(self._next_expiry(), self._room.set)
                self._waiting += 1
                try:
                    await self._room.wait()
                finally:
                    self._waiting -= 1
                    waker.cancel()
                continue
            limit = min(room, per_fetch)
            self._in_flight += limit  # reserved while the fetch is out
            self._reserved += limit
            got = 0
            try:
                req = FetchRequest(
                    self.topic.config,
                    self.group or "",
                    self.consumer,
                    position,
                    limit,
                    POLL_WAIT,
                    self.ack_wait,
                    self.max_deliver,
                    seek,
                )
                reply = await self._fetcher.fetch(key, req)
                got = len(reply.entries)
            except OffsetOutOfRangeError as exc:
                self._in_flight -= limit
                self._reserved -= limit
                if self._start == "earliest" and seek is None:
                    position = exc.first  # the policy says: from the first retained message
                    continue
                self._record_error(exc)
                self._queue.put_nowait(exc)
                return
            except Exception as exc:  # keep fetching: the partition may come back
                self._in_flight -= limit
                self._reserved -= limit
                self._record_error(exc)
                await clock.sleep(0.2)
                continue
            self._in_flight -= limit - got
            self._reserved -= limit
            if self._in_flight < self.max_in_flight:
                self._room.set()
            if self.group is None:
                position = reply.next
            seek = None
            self._expired += reply.expired
            expires = clock.monotonic() + self.ack_wait
            for entry, deliveries in zip(reply.entries, reply.deliveries, strict=True):
                if self.group is not None:
                    self._held[(partition, entry.seq, deliveries)] = expires
                self._delivered += 1
                if deliveries > 1:
                    self._redelivered += 1
                self._queue.put_nowait(
                    Message(
                        self.topic.name,
                        partition,
                        entry.seq,
                        entry.epoch,
                        entry.data,
                        entry.key,
                        entry.msg_id,
                        entry.time,
                        deliveries,
                        self._settle_fn if self.group is not None else None,
                        False,
                        self._ack_nowait_fn if self.group is not None else None,
                    )
                )
            if self._waiting:
                # One turn for the loops parked for room (woken in the order they
                # parked) before this one asks again: the free slots go round the
                # partitions instead of back to this one.
                await asyncio.sleep(0)

    def _next_expiry(self) -> float:
        if not self._held:
            return self.ack_wait
        now = self.topic.pubsub.node.clock.monotonic()
        return max(0.0, min(self._held.values()) - now)

    def _initial_position(self) -> int:
        if self._start == "latest":
            return -1
        if self._start == "earliest":
            return 0
        if isinstance(self._start, int) and not isinstance(self._start, bool):
            return self._start
        raise InvalidOptionError(
            f"start must be 'earliest', 'latest' or an offset: {self._start!r}"
        )

    def _record_error(self, exc: BaseException) -> None:
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        logger.debug("pubsub: subscription %s: %s", self.consumer, self._last_error)

    async def _settle(self, message: Message, op: int, wait: float) -> None:
        if message.settled and op != PROGRESS:
            return
        if self._closed:
            raise SubscriptionClosedError("the subscription is closed")
        if op == PROGRESS:
            wait = self.ack_wait
        try:
            if op == ACK:
                await self._ack_batched(message)
            else:
                await self._send_settle(message.partition, op, wait, [message])
        except PubSubError as exc:
            self._record_error(exc)
            if exc.code in ("stale_ack", "not_held") and not message.settled:
                message.settled = True
                self._unhold(message)
            raise
        if op == PROGRESS:
            token = (message.partition, message.offset, message.deliveries)
            if token in self._held:
                self._held[token] = self.topic.pubsub.node.clock.monotonic() + self.ack_wait
            return
        message.settled = True
        if op in (0, 3):
            self._acked += 1
        self._unhold(message)

    async def _send_settle(
        self, partition: int, op: int, wait: float, messages: list[Message]
    ) -> None:
        req = SettleRequest(
            self.topic.config,
            self.group or "",
            self.consumer,
            op,
            wait,
            [(m.offset, m.deliveries) for m in messages],
        )
        key = self.topic._keys[partition]
        await self.topic.pubsub.client.run(
            key, SETTLE, req.encode, lambda s: s.settle(key, req), _ignore_reply
        )

    async def _ack_batched(self, message: Message) -> None:
        # Acks of one partition share one SETTLE request in flight; acks made meanwhile go
        # in the next one (one replication of the group state for the whole batch).
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue_ack(message, fut)
        await fut

    def _enqueue_ack(self, message: Message, fut: asyncio.Future[None] | None) -> None:
        # Acks go per sequencer peer: one SETTLE_MANY carries every partition it sequences.
        peer = self.topic.pubsub.client.head(self.topic._keys[message.partition]) or ""
        batch = self._ack_batches.get(peer)
        if batch is None:
            batch = self._ack_batches[peer] = _AckBatch()
        batch.items.append((message, fut))
        if not batch.running:
            batch.running = True
            spawn(self._drain_acks(peer, batch))

    def _ack_nowait(self, message: Message) -> None:
        if message.settled:
            return
        if self._closed:
            raise SubscriptionClosedError("the subscription is closed")
        message.settled = True  # submitted once; its outcome is settled in _drain_acks
        self._enqueue_ack(message, None)

    def _acked_nowait(self, message: Message, result: BaseException | None) -> None:
        if result is None:
            self._acked += 1
            self._unhold(message)
            return
        self._record_error(result)
        if isinstance(result, PubSubError) and result.code in ("stale_ack", "not_held"):
            self._unhold(message)
        # Otherwise the message stays held until its ack_wait ends, then is redelivered.

    async def _drain_acks(self, peer: str, batch: _AckBatch) -> None:
        try:
            while batch.items:
                items = batch.items[:_ACK_BATCH]
                del batch.items[:_ACK_BATCH]
                sections: dict[int, list[tuple[Message, asyncio.Future[None] | None]]] = {}
                for item in items:
                    sections.setdefault(item[0].partition, []).append(item)
                done = await self._ack_many(peer, sections)
                for partition, its in sections.items():
                    if partition in done:
                        results: list[BaseException | None] = [None] * len(its)
                    else:  # the partition's own (retrying, per-item on refusal) path
                        results = await self._ack_partition(
                            partition, [m for m, _ in its], _hold(its)
                        )
                    for (message, fut), result in zip(its, results, strict=True):
                        if fut is None:
                            self._acked_nowait(message, result)
                        elif not fut.done():
                            if result is None:
                                fut.set_result(None)
                            else:
                                fut.set_exception(result)
        finally:
            batch.running = False

    async def _ack_many(
        self, peer: str, sections: dict[int, list[tuple[Message, asyncio.Future[None] | None]]]
    ) -> set[int]:
        """Ack several partitions of one remote sequencer in one SETTLE_MANY; returns the
        partitions it acked (the others take their own path: nothing is lost on failure,
        an ack is idempotent)."""
        client = self.topic.pubsub.client
        if len(sections) < 2 or not peer or peer == client.node.address:
            return set()
        reqs = [
            (
                self.topic._keys[partition],
                SettleRequest(
                    self.topic.config,
                    self.group or "",
                    self.consumer,
                    ACK,
                    _hold(its),
                    [(m.offset, m.deliveries) for m, _ in its],
                ),
            )
            for partition, its in sections.items()
        ]
        try:
            raw = await client.node.call(
                peer, NAMESPACE, SETTLE_MANY, reqs[0][0], encode_settle_many(reqs), timeout=2.0
            )
            replies = decode_section_replies(open_reply(raw), len(reqs))
        except Exception as exc:
            logger.debug("pubsub: settle_many to %s failed: %s", peer, exc)
            return set()
        return {
            partition
            for partition, reply in zip(sections, replies, strict=True)
            if not isinstance(reply, BaseException)
        }

    async def _ack_partition(
        self, partition: int, messages: list[Message], hold: float = 0.0
    ) -> list[BaseException | None]:
        try:
            await self._send_settle(partition, ACK, hold, messages)
            return [None] * len(messages)
        except PubSubError as exc:
            if len(messages) == 1:
                return [exc]
            # One bad ack refuses the batch: settle one by one to tell which.
            results: list[BaseException | None] = []
            for m in messages:
                try:
                    await self._send_settle(partition, ACK, hold, [m])
                    results.append(None)
                except PubSubError as one:
                    results.append(one)
            return results
        except Exception as exc:
            return [exc] * len(messages)

    def _unhold(self, message: Message) -> None:
        token = (message.partition, message.offset, message.deliveries)
        if self._held.pop(token, None) is not None:
            self._free(1)
        else:
            self._last_settle = self.topic.pubsub.node.clock.monotonic()
