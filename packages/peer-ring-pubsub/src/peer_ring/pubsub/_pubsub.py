"""``PubSub`` (one per node) and ``Topic``: the public entry points."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
from collections.abc import AsyncIterator
from datetime import datetime
from types import TracebackType
from typing import Any

from peer_ring.core import (
    Clock,
    Discovery,
    InvalidArgumentError,
    OwnershipChange,
    PeerRing,
    PeerRingConfig,
    fingerprint64,
)
from peer_ring.pubsub._client import SequencerClient
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._errors import InvalidOptionError, PayloadTooLargeError
from peer_ring.pubsub._leader import Leaders
from peer_ring.pubsub._log import Entry
from peer_ring.pubsub._message import Message, PublishResult
from peer_ring.pubsub._placement import Placement
from peer_ring.pubsub._service import Service
from peer_ring.pubsub._store import Store
from peer_ring.pubsub._subscription import Subscription
from peer_ring.pubsub._tasks import spawn
from peer_ring.pubsub._wire import (
    APPEND,
    FETCH,
    FETCH_MANY,
    GROUP,
    NAMESPACE,
    PROMISE,
    PUBLISH,
    PUBLISH_MANY,
    RANGE,
    SETTLE,
    SETTLE_MANY,
    STATUS,
    FetchReply,
    FetchRequest,
    OutgoingMessage,
    check_topic_name,
    encode_publish,
    ring_key,
)

logger = logging.getLogger(__name__)

DEFAULT_ACK_WAIT = 30.0
DEFAULT_MAX_DELIVER = 5
DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_TIMEOUT = 10.0
DEAD_LETTER_SUFFIX = ".dead-letter"
RETENTION_INTERVAL = 1.0  # seconds between two retention passes over idle partitions


class PubSub:
    """Partitioned, replicated topics on a peer-ring cluster (one instance per node).

    Args:
        discovery: how this node finds its peers (a ``PeerRing`` is created from it);
            or pass ``node=`` instead.
        node: an existing, not yet started ``PeerRing`` shared with other applications
            (it must register nothing else under the ``pubsub`` namespace).
        replication: replicas N of every partition's log and group state.
        quorum: replicas W that must hold a message before ``publish`` returns (and a
            group change before it takes effect). A sequencer takeover asks N - W + 1.
        config: the ``PeerRingConfig`` of the node created from ``discovery``.
        transport: the node's transport (tests pass an in-memory one).
        clock: the node's clock (tests pass a fake one).
        timeout: seconds a publish, fetch or settle keeps retrying while a partition
            changes hands.

    Raises:
        InvalidArgumentError: neither or both of ``discovery``/``node``, or a bad
            replication / quorum.
    """

    def __init__(
        self,
        discovery: Discovery | None = None,
        *,
        node: PeerRing | None = None,
        replication: int = 3,
        quorum: int = 2,
        config: PeerRingConfig | None = None,
        transport: Any = None,
        clock: Clock | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if (discovery is None) == (node is None):
            raise InvalidArgumentError("pass exactly one of discovery= or node=")
        if not isinstance(replication, int) or replication < 1:
            raise InvalidArgumentError(f"replication must be >= 1, not {replication!r}")
        if not isinstance(quorum, int) or not 1 <= quorum <= replication:
            raise InvalidArgumentError(f"quorum must be in [1, replication], not {quorum!r}")
        self._owns_node = node is None
        if node is None:
            assert discovery is not None
            cfg = config or PeerRingConfig(replication=replication, quorum=quorum)
            node = PeerRing(discovery, config=cfg, transport=transport, clock=clock)
        self.node: PeerRing = node
        self.replication = replication
        self.quorum = quorum
        self.store = Store(node.partition_for_key, node.clock.time)
        self.placement = Placement(node, replication)
        self.leaders = Leaders(node, self.store, replication, quorum, self.placement)
        self.client = SequencerClient(node, replication, timeout, self.placement)
        self.service = Service(self.leaders, self._dead_letter)
        self.client.service = self.service
        self.store.on_change = self._on_store_change
        self._topics: dict[str, Topic] = {}
        self._subscriptions: set[Subscription] = set()
        self.published = 0
        self._maintenance: asyncio.Task[None] | None = None
        self._register()

    def _register(self) -> None:
        node, store, service = self.node, self.store, self.service
        node.register(NAMESPACE, STATUS, store.handle_status)
        node.register(NAMESPACE, PROMISE, store.handle_promise)
        node.register(NAMESPACE, RANGE, store.handle_range)
        node.register(NAMESPACE, APPEND, store.handle_append)
        node.register(NAMESPACE, GROUP, store.handle_group)
        node.register(NAMESPACE, PUBLISH, service.handle_publish)
        node.register(NAMESPACE, PUBLISH_MANY, service.handle_publish_many)
        node.register(NAMESPACE, FETCH, service.handle_fetch)
        node.register(NAMESPACE, FETCH_MANY, service.handle_fetch_many)
        node.register(NAMESPACE, SETTLE, service.handle_settle)
        node.register(NAMESPACE, SETTLE_MANY, service.handle_settle_many)
        node.register_hooks(NAMESPACE, store)
        node.add_ownership_listener(self._on_ownership)

    # --------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start the node (when this PubSub created it) and the retention timer."""
        if self._owns_node:
            await self.node.start()
        if self._maintenance is None:
            self._maintenance = spawn(self._maintain())

    async def stop(self) -> None:
        """Close every subscription, then stop the node (when this PubSub created it)."""
        for sub in list(self._subscriptions):
            await sub.close()
        if self._maintenance is not None:
            self._maintenance.cancel()
            self._maintenance = None
        self.leaders.step_down_all(reason="stopping")
        if self._owns_node:
            await self.node.stop()

    async def __aenter__(self) -> PubSub:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ topics
    def topic(self, name: str, **options: Any) -> Topic:
        """The topic ``name`` with ``options`` (see ``TopicConfig`` for names and defaults).

        Every node must declare a topic with the same options.

        Raises:
            InvalidOptionError: a bad name, an unknown or invalid option, or options that
                differ from an earlier declaration on this node.
        """
        check_topic_name(name)
        config = TopicConfig.from_options(options)
        known = self._topics.get(name)
        if known is not None:
            if options and known.config != config:
                raise InvalidOptionError(
                    f"topic {name!r} was declared with other options: {known.config}"
                )
            return known
        topic = self._topics[name] = Topic(self, name, config)
        self.placement.declare(name, config)
        return topic

    def metrics(self) -> dict[str, Any]:
        """Counters of this node, with the health of each local subscription."""
        health = [s.health() for s in self._subscriptions]
        return {
            "published": self.published,
            "sequencing": len(self.leaders.leaders),
            "takeovers": self.leaders.takeovers,
            "step_downs": self.leaders.step_downs,
            "retries": self.client.retries,
            "expired_unread": self.service.expired,
            "dead_lettered": self.service.dead_lettered,
            "partitions_held": len(self.store.states),
            "stalled_subscriptions": sum(1 for h in health if h.stalled),
            "subscriptions": health,
        }

    # ---------------------------------------------------------------- internal
    async def _maintain(self) -> None:
        # Appends apply retention as they come; this applies age retention and the dedup
        # window to partitions nobody publishes to.
        clock = self.node.clock
        while True:
            await clock.sleep(RETENTION_INTERVAL)
            now = clock.time()
            for state in list(self.store.states.values()):
                state.log.apply_retention(now)

    def _on_store_change(self, key: bytes) -> None:
        leader = self.leaders.leaders.get(key)
        if leader is not None:
            leader.notify()

    def _on_ownership(self, change: OwnershipChange) -> None:
        ring = change.ring
        for key, leader in list(self.leaders.leaders.items()):
            prefs = ring.preference_list(ring.partition_for_key(key), self.replication)
            if prefs != leader.preference:
                self.leaders.step_down(key, "its replicas changed")
            elif self.placement.sequencer_in(ring, key) != self.node.address:
                self.leaders.step_down(key, "another replica sequences it now")

    async def _dead_letter(self, topic: str, key: bytes, group: str, entry: Entry) -> None:
        source = self._topics.get(topic)
        config = source.config if source is not None else TopicConfig()
        name = topic + DEAD_LETTER_SUFFIX
        target = self._topics.get(name) or self.topic(name, **_options(config))
        await target.publish(
            entry.data,
            key=entry.key or None,
            msg_id=f"dead:{key.decode()}:{group}:{entry.epoch}:{entry.seq}",
        )


def _options(config: TopicConfig) -> dict[str, Any]:
    return {
        "partitions": config.partitions,
        "max_messages": config.max_messages,
        "max_bytes": config.max_bytes,
        "max_age": config.max_age,
        "max_message_bytes": config.max_message_bytes,
        "dedup_window": config.dedup_window,
    }


class Topic:
    """A topic: publish to it, subscribe to it, replay it. Get one with ``PubSub.topic``."""

    def __init__(self, pubsub: PubSub, name: str, config: TopicConfig) -> None:
        self.pubsub = pubsub
        self.name = name
        self.config = config
        self._round_robin = itertools.count()
        self._keys = [ring_key(name, p) for p in range(config.partitions)]  # per publish

    @property
    def dead_letter(self) -> Topic:
        """The topic receiving this topic's messages that reached ``max_deliver``."""
        name = self.name + DEAD_LETTER_SUFFIX
        return self.pubsub._topics.get(name) or self.pubsub.topic(name, **_options(self.config))

    def sequencer(self, partition: int) -> str | None:
        """The address of the node sequencing ``partition`` in this node's current ring
        (every node computes the same one from the same ring; None: an empty ring)."""
        if not isinstance(partition, int) or not 0 <= partition < self.config.partitions:
            raise InvalidOptionError(f"no partition {partition!r} in topic {self.name!r}")
        return self.pubsub.placement.sequencer(self._keys[partition])

    def partition_for(self, key: bytes | str | None) -> int:
        """The partition a message with ``key`` goes to (round robin without a key)."""
        if key is None:
            return next(self._round_robin) % self.config.partitions
        raw = key.encode() if isinstance(key, str) else key
        return fingerprint64(raw) % self.config.partitions

    async def publish(
        self,
        data: bytes,
        *,
        key: bytes | str | None = None,
        msg_id: str | None = None,
        partition: int | None = None,
        timeout: float | None = None,
    ) -> PublishResult:
        """Append ``data`` to the topic; returns once W replicas hold it.

        Args:
            data: the payload.
            key: messages with the same key go to the same partition, in order.
            msg_id: idempotency id: a retry with the same id within the topic's
                ``dedup_window`` is stored once (``duplicate=True`` on the retry), also
                across a sequencer failover.
            partition: an explicit partition (instead of ``key``).
            timeout: seconds to keep retrying while the partition changes hands.

        Raises:
            PayloadTooLargeError: ``data`` is larger than ``max_message_bytes``.
            InvalidOptionError: bad argument types or partition.
            PublishError / PartitionUnavailableError: not acknowledged by W replicas in
                time; the message may or may not be stored (retry with the same msg_id).
        """
        raw_key, body, partition = self._prepare(data, key, msg_id, partition)
        epoch, seq, duplicate = await self.pubsub.client.publish(
            self._keys[partition],
            self.config,
            OutgoingMessage(body, raw_key, msg_id or ""),
            timeout,
        )
        self.pubsub.published += 1
        return PublishResult(self.name, partition, seq, epoch, duplicate)

    def _prepare(
        self,
        data: bytes,
        key: bytes | str | None,
        msg_id: str | None,
        partition: int | None,
    ) -> tuple[bytes, bytes, int]:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidOptionError(f"data must be bytes, not {type(data).__name__}")
        raw_key = b"" if key is None else (key.encode() if isinstance(key, str) else bytes(key))
        if msg_id is not None and not isinstance(msg_id, str):
            raise InvalidOptionError("msg_id must be a string")
        body = bytes(data)
        size = len(body) + len(raw_key) + len(msg_id or "")
        if size > self.config.max_message_bytes:
            raise PayloadTooLargeError(
                f"message of {size} bytes exceeds max_message_bytes="
                f"{self.config.max_message_bytes} of topic {self.name!r}"
            )
        if partition is None:
            partition = self.partition_for(key)
        elif not isinstance(partition, int) or not 0 <= partition < self.config.partitions:
            raise InvalidOptionError(
                f"partition must be in [0, {self.config.partitions}), not {partition!r}"
            )
        return raw_key, body, partition

    def publish_nowait(
        self,
        data: bytes,
        *,
        key: bytes | str | None = None,
        msg_id: str | None = None,
        partition: int | None = None,
    ) -> None:
        """Fire and forget: hand ``data`` to the partition's sequencer and return at once.

        Nothing is awaited and nothing is reported: the message is lost if the sequencer
        is unreachable, changing hands or refuses it (too large...). When it arrives, it is
        stored and replicated like any other (subscribers cannot tell the difference).

        Raises:
            PayloadTooLargeError / InvalidOptionError: checked locally, before sending.
        """
        raw_key, body, partition = self._prepare(data, key, msg_id, partition)
        self.pubsub.node.send(
            NAMESPACE,
            PUBLISH,
            ring_key(self.name, partition),
            encode_publish(self.config, [OutgoingMessage(body, raw_key, msg_id or "")]),
            replication=1,
        )

    def subscribe(
        self,
        group: str | None = None,
        *,
        ack_wait: float = DEFAULT_ACK_WAIT,
        max_deliver: int = DEFAULT_MAX_DELIVER,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        start: str | int = "earliest",
        partitions: list[int] | None = None,
        start_time: float | datetime | None = None,
    ) -> Subscription:
        """Subscribe: ``group`` for competing consumers, ``None`` for broadcast.

        Args:
            group: consumers of one group share the messages (each to one live member);
                without a group every subscriber gets every message (not durable: it
                starts at ``start`` each time).
            ack_wait: seconds before an unacked message is redelivered.
            max_deliver: deliveries before a message goes to the dead-letter topic.
            max_in_flight: messages this subscriber holds at most (backpressure).
            start: where a new group (or a broadcast subscriber) starts: "earliest",
                "latest" or an offset (broadcast only).
            partitions: only these partitions (default: all).
            start_time: start at the first message of each partition published at or after
                this time (seconds since the epoch, or an aware ``datetime``; the stamp is
                the sequencer's clock, see the README). For a group it applies when the group
                is created; an existing group keeps its cursor. Replaces ``start``.

        Raises:
            InvalidOptionError: an invalid option.
        """
        when = _time_arg(start_time)
        if when is not None and start != "earliest":
            raise InvalidOptionError("pass start= or start_time=, not both")
        if group is not None and (not isinstance(group, str) or not group):
            raise InvalidOptionError("group must be a non-empty string or None")
        _check_positive("ack_wait", ack_wait)
        if not isinstance(max_deliver, int) or max_deliver < 1:
            raise InvalidOptionError(f"max_deliver must be >= 1, not {max_deliver!r}")
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise InvalidOptionError(f"max_in_flight must be >= 1, not {max_in_flight!r}")
        if start not in ("earliest", "latest") and (
            group is not None or not isinstance(start, int) or isinstance(start, bool) or start < 0
        ):
            raise InvalidOptionError(
                f"start must be 'earliest', 'latest' (or an offset without a group): {start!r}"
            )
        parts = self._partitions(partitions)
        return Subscription(
            self,
            group,
            ack_wait=float(ack_wait),
            max_deliver=max_deliver,
            max_in_flight=max_in_flight,
            start=start,
            partitions=parts,
            start_time=when,
        )

    async def read(
        self,
        start: int = 0,
        *,
        partitions: list[int] | None = None,
        batch: int = 256,
        start_time: float | datetime | None = None,
    ) -> AsyncIterator[Message]:
        """Replay the topic from offset ``start`` of each partition to its current end.

        Partitions are read one after the other, each in offset order.

        Args:
            start: the first offset of each partition.
            partitions: only these partitions (default: all).
            batch: messages per request.
            start_time: instead of ``start``, begin each partition at its first message
                published at or after this time (seconds since the epoch, or an aware
                ``datetime``), found by a binary search over the retained log. Times are
                the sequencers' clocks (see the README on skew).

        Raises:
            OffsetOutOfRangeError: ``start`` is below a partition's retention, or retention
                dropped messages published at or after ``start_time`` (its ``first``
                attribute says where the retained messages begin).
        """
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise InvalidOptionError(f"start must be an offset >= 0, not {start!r}")
        when = _time_arg(start_time)
        if when is not None and start != 0:
            raise InvalidOptionError("pass start= or start_time=, not both")
        for partition in self._partitions(partitions):
            key = ring_key(self.name, partition)
            position = start
            seek = when
            while True:
                req = FetchRequest(self.config, "", "", position, batch, 0.0, 1.0, 1, seek)
                reply = await self.pubsub.client.run(
                    key,
                    FETCH,
                    req.encode,
                    functools.partial(Service.fetch_by, key, req),
                    FetchReply.from_reader,
                )
                for entry in reply.entries:
                    yield Message(
                        self.name,
                        partition,
                        entry.seq,
                        entry.epoch,
                        entry.data,
                        entry.key,
                        entry.msg_id,
                        entry.time,
                        0,
                    )
                if reply.next <= position and seek is None:
                    break
                position, seek = reply.next, None

    def _partitions(self, partitions: list[int] | None) -> list[int]:
        if partitions is None:
            return list(range(self.config.partitions))
        for p in partitions:
            if not isinstance(p, int) or not 0 <= p < self.config.partitions:
                raise InvalidOptionError(f"no partition {p!r} in topic {self.name!r}")
        return list(partitions)


def _time_arg(value: object) -> float | None:
    """``start_time`` as seconds since the epoch (None stays None).

    Raises:
        InvalidOptionError: not a non-negative number or an aware ``datetime``.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidOptionError("start_time must be an aware datetime (with a tzinfo)")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidOptionError(f"start_time must be seconds or a datetime, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise InvalidOptionError(f"start_time must be a time >= 0, not {value!r}")
    return float(value)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidOptionError(f"{name} must be a positive number, not {value!r}")
