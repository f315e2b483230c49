"""The TCP transport's listening side: inbound protocols, and closing without a leak.

asyncio's ``Server.close()`` (CPython 3.11-3.13) closes the listening sockets at once, but
a connection whose ``accept()`` already ran is set up by a task of its own one loop turn
later. When ``close()`` falls between the two, the task's transport is built on a closed
server (an ``AssertionError`` inside asyncio, swallowed) and its socket is left open: an
``unclosed transport <_SelectorSocketTransport fd=N read=idle ...>`` ResourceWarning
once collected. :class:`Acceptor` stops accepting first, lets the connections already
accepted reach :meth:`~asyncio.Protocol.connection_made` (where the transport, no longer
running, aborts them), and only then closes the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable

from peer_ring.core.transport._tcp_wire import FrameProtocol

#: Seconds :meth:`Acceptor.close` waits for accepted connections to reach the transport
#: (a TLS one arrives once its handshake is done; asyncio times a stalled one out).
ARRIVAL_WAIT = 1.0


class Acceptor:
    """Makes the protocols of inbound connections; closes their server without a leak.

    Args:
        max_body: the largest message body a connection accepts.
        on_connection: called with each protocol once its connection is made.
    """

    def __init__(self, max_body: int, on_connection: Callable[[FrameProtocol], None]) -> None:
        self._max_body = max_body
        self._on_connection = on_connection
        # Protocols asyncio made for an accepted connection that has not reached
        # connection_made yet. Weak: one whose TLS handshake fails is dropped by asyncio
        # without a callback, and must not stay here for the node's lifetime.
        self._arriving: weakref.WeakSet[FrameProtocol] = weakref.WeakSet()
        self._all_arrived: asyncio.Future[None] | None = None

    def protocol(self) -> FrameProtocol:
        """The server's protocol factory (called by asyncio for each accepted socket)."""
        proto = FrameProtocol(self._max_body, self._made)
        self._arriving.add(proto)
        return proto

    def _made(self, proto: FrameProtocol) -> None:
        self._arriving.discard(proto)
        waiter = self._all_arrived
        if waiter is not None and not self._arriving and not waiter.done():
            waiter.set_result(None)
        self._on_connection(proto)

    def stop_accepting(self, server: asyncio.Server) -> None:
        """Accept no more connections; the server stays open (see :meth:`close`)."""
        loop = asyncio.get_running_loop()
        # Only asyncio's own loops accept through a reader on the listening socket (and
        # have the race); uvloop's server does not, and does not need this.
        if isinstance(loop, asyncio.SelectorEventLoop):
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())

    async def close(self, server: asyncio.Server) -> None:
        """Close ``server`` once every connection it accepted reached the transport.

        Call :meth:`stop_accepting` first; the transport aborts what arrives after it
        stopped running.
        """
        # The set-up task of a connection accepted in this loop turn runs its first step
        # (which builds the transport on the still-open server) in the next turn.
        await asyncio.sleep(0)
        server.close()
        if not self._arriving:
            return
        self._all_arrived = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._all_arrived), ARRIVAL_WAIT)
