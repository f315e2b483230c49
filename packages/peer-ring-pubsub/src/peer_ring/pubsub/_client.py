"""Calls from any node to a partition's sequencer, with retries across takeovers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from peer_ring.core import (
    Command,
    NotRunningError,
    OverloadedError,
    PeerRing,
    PeerUnavailableError,
    RemoteError,
    RequestTimeoutError,
)
from peer_ring.pubsub._codec import Reader
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._errors import PartitionUnavailableError
from peer_ring.pubsub._placement import Placement
from peer_ring.pubsub._service import Service, typed_error
from peer_ring.pubsub._tasks import spawn
from peer_ring.pubsub._wire import (
    NAMESPACE,
    PUBLISH,
    PUBLISH_MANY,
    OutgoingMessage,
    decode_publish_many,
    decode_publish_results,
    encode_publish,
    encode_publish_many,
    open_reply,
)

logger = logging.getLogger(__name__)

#: Errors after which a call to the sequencer is retried (the partition is changing hands,
#: or the sequencer is unreachable until the ring drops it).
RETRYABLE = (
    PartitionUnavailableError,
    PeerUnavailableError,
    RequestTimeoutError,
    OverloadedError,
    NotRunningError,
)

T = TypeVar("T")


async def local_call(run: Callable[[Service], Awaitable[T]], service: Service) -> T:
    """Run ``run(service)`` here, raising the typed error a remote caller would get."""
    try:
        return await run(service)
    except Exception as exc:
        mapped = typed_error(exc)
        if mapped is None or mapped is exc:
            raise
        raise mapped from exc


_PUBLISH_BATCH = 512
# PUBLISH requests in flight per partition from one node. One: what arrives meanwhile makes
# the next batch (tools/bench pubsub, N=3, 64 publishers: 15-25% more messages/s than 4).
_PIPELINE = 1
_PUBLISH_BATCH_BYTES = 1024 * 1024
# PUBLISH_MANY requests in flight per sequencer peer: one under load (batching), up to
# _PEER_PIPELINE while the requests stay light (at most _LIGHT messages each).
_PEER_PIPELINE = 2
_LIGHT = 4


class SequencerClient:
    """Routes requests to the sequencer of a partition (see :mod:`._placement`) and retries.

    When this node is the sequencer, requests go straight to its :class:`Service` without
    encoding anything (the N=1 case, and a share of the partitions in any cluster); a
    retryable error there falls back to the routed, retrying path.
    """

    def __init__(
        self, node: PeerRing, replication: int, timeout: float, placement: Placement
    ) -> None:
        self.node = node
        self.replication = replication
        self.timeout = timeout
        self._batches: dict[bytes, _Batch] = {}
        self._peers: dict[str, _PeerBatch] = {}
        self.retries = 0
        self.service: Service | None = None  # set by PubSub once built
        #: The partitions' sequencers (cached per ring); ``head`` is its lookup.
        self.placement = placement
        self.head = placement.sequencer

    def local_service(self, key: bytes) -> Service | None:
        """This node's service when it is the sequencer of ``key``, else None."""
        if self.service is not None and self.head(key) == self.node.address:
            return self.service
        return None

    async def run(
        self,
        key: bytes,
        command: Command,
        encode: Callable[[], bytes],
        local: Callable[[Service], Awaitable[T]],
        decode: Callable[[Reader], T],
        *,
        timeout: float | None = None,
        wait: float = 0.0,
    ) -> T:
        """Run a request on the sequencer of ``key``: directly when it is this node
        (``local``), else encoded (``encode``), routed with retries, and ``decode``-d."""
        service = self.local_service(key)
        if service is not None:
            try:
                return await local_call(local, service)
            except RETRYABLE as exc:
                self.retries += 1
                logger.debug("pubsub: retrying %s on %r remotely: %s", command.name, key, exc)
        return decode(await self.call(key, command, encode(), timeout, wait))

    async def call(
        self,
        key: bytes,
        command: Command,
        payload: bytes,
        timeout: float | None = None,
        wait: float = 0.0,
    ) -> Reader:
        """Send to the sequencer of ``key``; return the reply body or raise its typed error.

        Retries retryable failures with a growing backoff until ``timeout`` (default: the
        client's) has passed.
        """
        clock = self.node.clock
        deadline = clock.monotonic() + (self.timeout if timeout is None else timeout)
        backoff = 0.02
        while True:
            head = self.head(key)
            try:
                if head is None:
                    raise PartitionUnavailableError("no member in the ring")
                payload_out = await self.node.call(
                    head, NAMESPACE, command, key, payload, timeout=wait + 2.0
                )
                return open_reply(payload_out)
            except RETRYABLE as exc:
                if clock.monotonic() + backoff >= deadline:
                    raise PartitionUnavailableError(
                        f"partition {key.decode()!r} unavailable: {exc}"
                    ) from exc
                self.retries += 1
                logger.debug("pubsub: retrying %s on %r: %s", command.name, key, exc)
            except RemoteError as exc:  # a handler crashed remotely: not expected, surface it
                raise PartitionUnavailableError(f"sequencer error: {exc}") from exc
            await clock.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    async def publish(
        self, key: bytes, config: TopicConfig, message: OutgoingMessage, timeout: float | None
    ) -> tuple[int, int, bool]:
        """Publish one message through the partition's batch; ``(epoch, seq, duplicate)``."""
        service = self.local_service(key)
        if service is not None:  # the sequencer batches what arrives while it replicates
            try:
                try:  # local_call inlined: one coroutine less per local publish
                    results = await service.leaders.publish(key, config, [message])
                except Exception as exc:
                    mapped = typed_error(exc)
                    if mapped is None or mapped is exc:
                        raise
                    raise mapped from exc
                entry, duplicate = results[0]
                return entry.epoch, entry.seq, duplicate
            except RETRYABLE as exc:
                self.retries += 1
                logger.debug("pubsub: retrying a publish on %r remotely: %s", key, exc)
        fut: asyncio.Future[tuple[int, int, bool]] = asyncio.get_running_loop().create_future()
        head = self.head(key)
        if head is not None and head != self.node.address and timeout is None:
            # Publishes for every partition this peer sequences share one request.
            peer = self._peers.get(head)
            if peer is None:
                peer = self._peers[head] = _PeerBatch()
            peer.items.append((key, config, message, fut))
            if not peer.running or (peer.running < _PEER_PIPELINE and peer.light):
                peer.running += 1
                spawn(self._drain_peer(head, peer))
            return await fut
        self._enqueue(key, config, message, fut, timeout)
        return await fut

    def _enqueue(
        self,
        key: bytes,
        config: TopicConfig,
        message: OutgoingMessage,
        fut: asyncio.Future[tuple[int, int, bool]],
        timeout: float | None,
    ) -> None:
        """Publish through the partition's own batch (routed with retries)."""
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch()
        batch.items.append((message, fut))
        # A local sequencer is CPU-bound: one request at a time batches best. A remote one
        # is latency-bound: a few requests in flight hide the round trips.
        limit = 1 if self.head(key) == self.node.address else _PIPELINE
        if batch.running < limit:
            batch.running += 1
            spawn(self._drain(key, config, batch, timeout))

    async def _drain_peer(self, peer: str, batch: _PeerBatch) -> None:
        # One PUBLISH_MANY in flight per peer under load: what is published meanwhile, to
        # any of its partitions, makes the next one. Under a light load (the last request
        # carried at most _LIGHT messages) a second one may leave meanwhile: batching then
        # saves little, and a message no longer waits for a whole round of the request
        # before it (the p99 at a moderate rate). Each drain takes the oldest items and
        # requests to one peer travel in order on one stream, so order per partition is
        # kept. A partition whose section failed with a retryable error (it changed
        # hands...) goes through its own batch, which retries until the client's timeout.
        try:
            while batch.items:
                count = size = 0
                for item in batch.items:  # up to _PUBLISH_BATCH messages or ~1 MiB
                    if count == _PUBLISH_BATCH or (count and size >= _PUBLISH_BATCH_BYTES):
                        break
                    count += 1
                    size += len(item[2].data)
                items = batch.items[:count]
                del batch.items[:count]
                batch.light = count <= _LIGHT
                sections: dict[bytes, tuple[TopicConfig, list[_PeerItem]]] = {}
                for item in items:
                    sections.setdefault(item[0], (item[1], []))[1].append(item)
                payload = encode_publish_many(
                    [(key, config, [i[2] for i in its]) for key, (config, its) in sections.items()]
                )
                replies: list[list[tuple[int, int, bool]] | BaseException]
                try:
                    raw = await self.node.call(
                        peer, NAMESPACE, PUBLISH_MANY, items[0][0], payload, timeout=2.0
                    )
                    replies = decode_publish_many(open_reply(raw), len(sections))
                except RemoteError as exc:
                    replies = [PartitionUnavailableError(f"sequencer error: {exc}")] * len(sections)
                except Exception as exc:  # the whole request failed
                    replies = [exc] * len(sections)
                for (_, its), reply in zip(sections.values(), replies, strict=True):
                    self._settle_section(its, reply)
        finally:
            batch.running -= 1

    def _settle_section(
        self, items: list[_PeerItem], reply: list[tuple[int, int, bool]] | BaseException
    ) -> None:
        if isinstance(reply, RETRYABLE):
            self.retries += 1
            for key, config, message, fut in items:
                self._enqueue(key, config, message, fut, None)
            return
        for i, (_, _, _, fut) in enumerate(items):
            if fut.done():
                continue
            if isinstance(reply, BaseException):
                fut.set_exception(reply)
            else:
                fut.set_result(reply[i])

    async def _drain(
        self, key: bytes, config: TopicConfig, batch: _Batch, timeout: float | None
    ) -> None:
        # Up to _PIPELINE PUBLISH requests in flight per partition from this node; messages
        # published meanwhile go in the next request (load becomes batching). Requests to
        # one peer travel in order on one stream and the sequencer numbers them on
        # arrival, so order per partition is kept (a retry after an error may reorder).
        try:
            while batch.items:
                items: list[tuple[OutgoingMessage, asyncio.Future[tuple[int, int, bool]]]] = []
                size = 0
                while batch.items and len(items) < _PUBLISH_BATCH and size < _PUBLISH_BATCH_BYTES:
                    item = batch.items.pop(0)
                    items.append(item)
                    size += len(item[0].data)
                try:
                    r = await self.call(
                        key, PUBLISH, encode_publish(config, [m for m, _ in items]), timeout
                    )
                    results = decode_publish_results(r)
                except Exception as exc:  # every waiter gets the error, the batch goes on
                    for _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(items, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            batch.running -= 1


_PeerItem = tuple[bytes, TopicConfig, OutgoingMessage, asyncio.Future[tuple[int, int, bool]]]


@dataclass(slots=True)
class _PeerBatch:
    items: list[_PeerItem] = field(default_factory=list)
    running: int = 0  # PUBLISH_MANY requests in flight (drains running)
    light: bool = False  # the last request carried at most _LIGHT messages


@dataclass(slots=True)
class _Batch:
    items: list[tuple[OutgoingMessage, asyncio.Future[tuple[int, int, bool]]]] = field(
        default_factory=list
    )
    running: int = 0
