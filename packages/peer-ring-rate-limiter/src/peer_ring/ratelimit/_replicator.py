"""The owner's replication of new states to one replica node.

Keys whose state changed are gathered (a key decided again before its message leaves is
sent once, with its newest state) and sent in one message per round trip: at most
``max_in_flight`` messages await their answer, what arrives meanwhile leaves together in
the next one. Every decision waiting for a message awaits the *same* future (one per
message, not one per decision), so a batch of 20 forwarded hits on the owner costs one
future and one wake-up per replica node instead of 20.

The message leaves at the next event-loop turn: its task is created at once and takes the
keys when it first runs, so every key submitted in the same turn goes with it (one loop
iteration fewer than a scheduled callback that then creates the task).

``light_in_flight`` relaxes the bound at a light load, as for forwarded hits (see
:mod:`~peer_ring.ratelimit._batcher`): while every message in flight holds a single key,
another may leave at once (up to that many messages in flight), so a lone decision does not
wait for the previous decision's replication round trip.

Relayed decisions (see :mod:`~peer_ring.ratelimit._relay`) ride in the same message as the
states: :meth:`Replicator.relay` queues one beside its key, and the replica answers the
forwarder once it stored the states.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

logger = logging.getLogger(__name__)


class Replicator:
    """New states of keys for one replica node, sent in batches (see the module doc).

    Args:
        send: sends the newest states of the given keys (a mapping of each key to its
            partition, -1 when the submitter did not give it), with the relayed decisions
            queued beside them, and returns when the replica stored them (or the fallback is
            done); an exception fails the waiting decisions.
        max_in_flight: messages awaiting their answer at once (None: no bound).
        light_in_flight: while every message in flight holds a single key, another may
            leave at once, up to this many in flight (None: only ``max_in_flight``).
    """

    def __init__(
        self,
        send: Callable[[Mapping[bytes, int], list[bytes]], Awaitable[None]],
        max_in_flight: int | None = 1,
        light_in_flight: int | None = None,
    ) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if light_in_flight is not None and light_in_flight < 1:
            raise ValueError(f"light_in_flight must be at least 1, got {light_in_flight}")
        self._send = send
        self._max_in_flight = max_in_flight
        self._light = light_in_flight or 0
        self._lone = 0  # messages in flight holding a single key
        #: Keys that found every message slot busy (they waited for a round trip to end).
        self.waited = 0
        self._pending: dict[bytes, int] = {}
        self._relays: list[bytes] = []
        self._next: asyncio.Future[None] | None = None
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Messages sent (or about to be) and not yet answered."""
        return len(self._tasks)

    def submit(self, key: bytes, partition: int = -1) -> asyncio.Future[None]:
        """Replicate ``key``'s newest state; the future resolves once it is stored there.

        Keys submitted before the next message leaves share its future. ``partition``: the
        key's, when the caller has it (the message then reads the store without hashing
        the key again).
        """
        self._pending[key] = partition
        fut = self._next
        if fut is None:
            fut = self._next = asyncio.get_running_loop().create_future()
        if not self._scheduled:
            if self._saturated():
                self.waited += 1  # waits for a message in flight to be answered
            else:
                self._schedule()
        return fut

    def relay(self, key: bytes, record: bytes, partition: int = -1) -> None:
        """Replicate ``key``'s newest state and send the relayed decision ``record`` with it
        (nobody on this node waits for it: the replica answers the forwarder)."""
        self._relays.append(record)
        self.submit(key, partition)

    @property
    def busy(self) -> bool:
        """Whether a key submitted now would wait for a message in flight to be answered."""
        return not self._scheduled and self._saturated()

    def _saturated(self) -> bool:
        n = len(self._tasks)
        if self._max_in_flight is None or n < self._max_in_flight:
            return False
        # A light load (every message in flight holds one key): one more may go now.
        return self._lone != n or n >= self._light

    def _schedule(self) -> None:
        self._scheduled = True
        task = asyncio.get_running_loop().create_task(self._run())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._pending and not self._scheduled and not self._saturated():
            self._schedule()

    async def _run(self) -> None:
        # Runs one loop turn after _schedule: the keys of that whole turn go together.
        self._scheduled = False
        keys, fut, relays = self._pending, self._next, self._relays
        self._pending, self._next, self._relays = {}, None, []
        if fut is None:
            return
        lone = len(keys) == 1
        self._lone += lone
        try:
            await self._send(keys, relays)
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved here: the waiters may all be gone
            if isinstance(exc, asyncio.CancelledError):
                raise
            logger.debug("replication of %d keys failed: %r", len(keys), exc)
            return
        finally:
            self._lone -= lone
        if not fut.done():
            fut.set_result(None)

    async def close(self) -> None:
        """Wait until every message in flight, and what waits behind them, is sent."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.sleep(0)
