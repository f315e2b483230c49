"""An in-process network: many nodes in one event loop, with injectable faults.

:class:`MemoryNetwork` connects :class:`MemoryTransport` instances by address. Delivery
goes through ``loop.call_soon`` (optionally after a latency on the injected clock), so a
cluster's behaviour depends only on the order of events, not on real time. Faults:

- ``cut(a, b)`` / ``heal(a, b)``: the link between two nodes refuses requests both ways
  (like a connection that cannot be opened); ``partition(group_a, group_b)`` cuts many.
- ``pause(address)``: the node swallows requests without answering (like SIGSTOP): the
  senders see deadlines expire. ``resume(address)`` delivers nothing that was swallowed.
- A transport that is closed (a killed node) refuses requests.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from peer_ring.core._clock import Clock, SystemClock
from peer_ring.core._errors import (
    MessageTooLargeError,
    NotRunningError,
    OverloadedError,
    PeerUnavailableError,
    RequestTimeoutError,
)
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.transport._base import (
    InboundHandler,
    ReachabilityListener,
    TransferHandler,
    Transport,
    TransportLimits,
)

logger = logging.getLogger(__name__)


class MemoryNetwork:
    """The medium that in-memory transports talk through.

    Args:
        clock: time source for deadlines and latency (a ``FakeClock`` in tests).
        latency: one-way delay in seconds added to every message (0 = next loop turn).
    """

    def __init__(self, clock: Clock | None = None, *, latency: float = 0.0) -> None:
        self.clock: Clock = clock or SystemClock()
        self.latency = latency
        self._nodes: dict[str, MemoryTransport] = {}
        self._cuts: set[frozenset[str]] = set()
        self._paused: set[str] = set()
        self.delivered = 0

    def transport(self, address: str, *, limits: TransportLimits | None = None) -> MemoryTransport:
        """Create the transport of the node at ``address``."""
        return MemoryTransport(self, address, limits or TransportLimits())

    # -- faults ---------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        """Refuse traffic between ``a`` and ``b`` (both directions)."""
        self._cuts.add(frozenset((a, b)))
        for x, y in ((a, b), (b, a)):
            node = self._nodes.get(x)
            if node is not None:
                node.notify_reachability(y, False)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Restore the link ``a`` - ``b``, or every link when called without arguments."""
        # Sorted, both the links and each link's two ends: a frozenset iterates in string
        # hash order (PYTHONHASHSEED), and who hears of the heal first changes what
        # happens next (a seeded simulation must replay in any interpreter).
        healed = sorted(self._cuts, key=sorted) if a is None else [frozenset((a, b or ""))]
        for link in healed:
            self._cuts.discard(link)
            pair = tuple(sorted(link))
            if len(pair) == 2:
                for x, y in (pair, pair[::-1]):
                    node = self._nodes.get(x)
                    if node is not None:
                        node.notify_reachability(y, True)

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """Cut every link between the two groups."""
        members_b = list(group_b)
        for a in group_a:
            for b in members_b:
                self.cut(a, b)

    def pause(self, address: str) -> None:
        """Make ``address`` swallow every request without answering."""
        self._paused.add(address)

    def resume(self, address: str) -> None:
        """Undo :meth:`pause`."""
        self._paused.discard(address)

    # -- internals ------------------------------------------------------------------------

    def _link_up(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self._cuts

    def _register(self, node: MemoryTransport) -> None:
        existing = self._nodes.get(node.address)
        if existing is not None and existing.running:
            raise OSError(f"address {node.address} is already in use on this network")
        self._nodes[node.address] = node

    def _unregister(self, node: MemoryTransport) -> None:
        if self._nodes.get(node.address) is node:
            del self._nodes[node.address]

    def _target(self, source: str, peer: str) -> MemoryTransport:
        node = self._nodes.get(peer)
        if node is None or not node.running:
            raise PeerUnavailableError(peer, "connection refused")
        if not self._link_up(source, peer):
            raise PeerUnavailableError(peer, "network unreachable")
        return node

    def _schedule(self, callback: Callable[[], object]) -> None:
        if self.latency > 0:
            self.clock.call_later(self.latency, callback)
        else:
            asyncio.get_running_loop().call_soon(callback)


class MemoryTransport(Transport):
    """A :class:`Transport` over a :class:`MemoryNetwork` (same contract as gRPC)."""

    def __init__(self, network: MemoryNetwork, address: str, limits: TransportLimits) -> None:
        self._network = network
        self._address = address
        self._limits = limits
        self._on_request: InboundHandler | None = None
        self._on_transfer: TransferHandler | None = None
        self._listeners: list[ReachabilityListener] = []
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._in_flight: dict[str, int] = {}
        self._ids = itertools.count(1)
        self.running = False
        #: Peers passed to :meth:`forget_peer`, in order (for tests).
        self.forgotten: list[str] = []

    @property
    def address(self) -> str:
        return self._address

    async def start(self, on_request: InboundHandler, on_transfer: TransferHandler) -> None:
        self._on_request = on_request
        self._on_transfer = on_transfer
        self._network._register(self)
        self.running = True

    def request(self, peer: str, request: Request) -> asyncio.Future[Response]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] = loop.create_future()
        if not self.running:
            fut.set_exception(NotRunningError(f"transport {self._address} is closed"))
            return fut
        size = len(request.key) + len(request.payload)
        if size > self._limits.max_message_bytes:
            fut.set_exception(
                MessageTooLargeError(
                    f"request of {size} bytes exceeds max_message_bytes="
                    f"{self._limits.max_message_bytes}"
                )
            )
            return fut
        if self._in_flight.get(peer, 0) >= self._limits.max_queued_per_peer:
            fut.set_exception(OverloadedError(f"too many requests queued for {peer}"))
            return fut
        self._in_flight[peer] = self._in_flight.get(peer, 0) + 1
        rid = next(self._ids)
        self._pending[rid] = fut
        timeout = request.timeout or 5.0
        timer = self._network.clock.call_later(
            timeout,
            lambda: self._fail(
                rid, RequestTimeoutError(f"request to {peer} timed out after {timeout:g}s")
            ),
        )

        def release(_: asyncio.Future[Response]) -> None:
            timer.cancel()
            self._pending.pop(rid, None)
            self._in_flight[peer] -= 1

        fut.add_done_callback(release)
        self._network._schedule(lambda: self._deliver(peer, rid, request))
        return fut

    def _fail(self, rid: int, error: BaseException) -> None:
        fut = self._pending.get(rid)
        if fut is not None and not fut.done():
            fut.set_exception(error)

    def _deliver(self, peer: str, rid: int, request: Request) -> None:
        fut = self._pending.get(rid)
        # A cancelled future is done at once but leaves _pending a turn later (callbacks
        # run soon): both mean the caller gave up before delivery, so nothing runs.
        if fut is None or fut.done():
            return  # cancelled or timed out before delivery
        try:
            target = self._network._target(self._address, peer)
        except PeerUnavailableError as exc:
            self.notify_reachability(peer, False)
            self._fail(rid, exc)
            return
        if peer in self._network._paused:
            return  # swallowed: the sender's deadline fires
        target._handle(self._address, request, lambda resp: self._reply(peer, rid, resp))

    def _handle(self, source: str, request: Request, respond: Callable[[Response], None]) -> None:
        assert self._on_request is not None
        try:
            result = self._on_request(source, request)
        except Exception as exc:  # the contract: handler errors never break the link
            respond(Response(Status.ERROR, b"", f"{type(exc).__name__}: {exc}"))
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)

            def done(t: asyncio.Future[Response]) -> None:
                if t.cancelled():
                    return
                exc = t.exception()
                if exc is not None:
                    respond(Response(Status.ERROR, b"", f"{type(exc).__name__}: {exc}"))
                else:
                    respond(t.result())

            task.add_done_callback(done)
        else:
            respond(result)

    def _reply(self, peer: str, rid: int, response: Response) -> None:
        def arrive() -> None:
            fut = self._pending.get(rid)
            if fut is None or fut.done():
                return
            if not self._network._link_up(self._address, peer) or peer in self._network._paused:
                return  # lost on the way back: the deadline fires
            self._network.delivered += 1
            fut.set_result(response)

        self._network._schedule(arrive)

    async def transfer(
        self, peer: str, request: TransferRequest, timeout: float
    ) -> AsyncIterator[list[bytes]]:
        if not self.running:
            raise NotRunningError(f"transport {self._address} is closed")
        target = self._network._target(self._address, peer)
        if peer in self._network._paused:
            await self._network.clock.sleep(timeout)
            raise RequestTimeoutError(f"transfer from {peer} timed out after {timeout:g}s")
        assert target._on_transfer is not None
        async for chunk in target._on_transfer(self._address, request):
            if not self._network._link_up(self._address, peer) or not target.running:
                raise PeerUnavailableError(peer, "link lost during transfer")
            yield list(chunk)

    def add_reachability_listener(self, listener: ReachabilityListener) -> None:
        self._listeners.append(listener)

    def notify_reachability(self, peer: str, reachable: bool) -> None:
        """Tell listeners that ``peer`` became (un)reachable (called by the network)."""
        for listener in self._listeners:
            listener(peer, reachable)

    def forget_peer(self, peer: str) -> None:
        """Nothing to close in memory; the call is recorded in :attr:`forgotten`."""
        self.forgotten.append(peer)

    async def close(self) -> None:
        self.running = False
        self._network._unregister(self)
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(NotRunningError(f"transport {self._address} closed"))
        self._pending.clear()
