"""Calls from any node to a partition's sequencer, with retries across takeovers."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

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
from peer_ring.pubsub._tasks import spawn
from peer_ring.pubsub._wire import (
    NAMESPACE,
    PUBLISH,
    OutgoingMessage,
    encode_publish,
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

_PUBLISH_BATCH = 512
_PIPELINE = 4  # PUBLISH requests in flight per partition from one node
_PUBLISH_BATCH_BYTES = 1024 * 1024


class SequencerClient:
    """Routes requests to the head of a partition's preference list and retries."""

    def __init__(self, node: PeerRing, replication: int, timeout: float) -> None:
        self.node = node
        self.replication = replication
        self.timeout = timeout
        self._batches: dict[bytes, _Batch] = {}
        self.retries = 0

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
            prefs = self.node.preference_list(key, self.replication)
            try:
                if not prefs:
                    raise PartitionUnavailableError("no member in the ring")
                payload_out = await self.node.call(
                    prefs[0], NAMESPACE, command, key, payload, timeout=wait + 2.0
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
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch()
        fut: asyncio.Future[tuple[int, int, bool]] = asyncio.get_running_loop().create_future()
        batch.items.append((message, fut))
        # A local sequencer is CPU-bound: one request at a time batches best. A remote one
        # is latency-bound: a few requests in flight hide the round trips.
        prefs = self.node.preference_list(key, self.replication)
        limit = 1 if prefs and prefs[0] == self.node.address else _PIPELINE
        if batch.running < limit:
            batch.running += 1
            spawn(self._drain(key, config, batch, timeout))
        return await fut

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
                    results = [(r.u64(), r.u64(), bool(r.u64())) for _ in range(r.u64())]
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


@dataclass(slots=True)
class _Batch:
    items: list[tuple[OutgoingMessage, asyncio.Future[tuple[int, int, bool]]]] = field(
        default_factory=list
    )
    running: int = 0
