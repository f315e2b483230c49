"""Group-state replication batched across partitions.

Every fetch that hands messages out and every ack batch replicates a group delta to W
replicas before it takes effect; with several partitions and groups these are the most
frequent requests between nodes. A sequencer queues the deltas made in one turn of the
event loop and sends them together: deltas of the same partition, group and epoch are
joined into one (group state is a join-semilattice, so applying the join is applying both),
and the rest travel in one ``execute_many`` (one request per replica peer; the quorum is
still counted per partition). Each caller waits for its own partition's outcome.
"""

from __future__ import annotations

import asyncio

from peer_ring.core import ExecuteResult, PeerRing, PeerRingError
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._group import GroupState
from peer_ring.pubsub._tasks import spawn
from peer_ring.pubsub._wire import GROUP, NAMESPACE, GroupRequest

_Token = tuple[bytes, int, str]  # ring key, epoch, group


class _Pending:
    __slots__ = ("config", "delta", "waiters")

    def __init__(self, config: TopicConfig) -> None:
        self.config = config
        self.delta = GroupState()
        self.waiters: list[asyncio.Future[None]] = []


class GroupBatcher:
    """Replicates group deltas to ``(replication, quorum)`` replicas, batched per loop turn."""

    def __init__(self, node: PeerRing, replication: int, quorum: int) -> None:
        self.node = node
        self.replication = replication
        self.quorum = quorum
        self._queue: dict[_Token, _Pending] = {}
        self._scheduled = False

    def submit(
        self, key: bytes, config: TopicConfig, epoch: int, group: str, delta: GroupState
    ) -> asyncio.Future[None]:
        """Queue ``delta``; the future ends once W replicas hold it (or with the
        ``PeerRingError`` that stopped it)."""
        loop = asyncio.get_running_loop()
        token = (key, epoch, group)
        pending = self._queue.get(token)
        if pending is None:
            pending = self._queue[token] = _Pending(config)
        pending.delta.merge(delta)
        fut: asyncio.Future[None] = loop.create_future()
        pending.waiters.append(fut)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, {}
        if batch:
            spawn(self._send(batch))

    async def _send(self, batch: dict[_Token, _Pending]) -> None:
        items = [
            (key, GroupRequest(p.config, epoch, group, p.delta).encode())
            for (key, epoch, group), p in batch.items()
        ]
        outcomes: list[BaseException | None]
        try:
            if len(items) == 1:
                key, payload = items[0]
                await self.node.execute(
                    NAMESPACE,
                    GROUP,
                    key,
                    payload,
                    replication=self.replication,
                    quorum=self.quorum,
                )
                outcomes = [None]
            else:
                results: list[ExecuteResult] = await self.node.execute_many(
                    NAMESPACE, GROUP, items, replication=self.replication, quorum=self.quorum
                )
                outcomes = [r.error for r in results]
        except PeerRingError as exc:
            outcomes = [exc] * len(items)
        for pending, outcome in zip(batch.values(), outcomes, strict=True):
            for fut in pending.waiters:
                if fut.done():
                    continue
                if outcome is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(outcome)
