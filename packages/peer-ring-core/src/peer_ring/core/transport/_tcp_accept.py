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
        # connection_made yet, with the loop time they were made. Weak: one whose TLS
        # handshake fails is dropped by asyncio without a callback (and stays until the
        # garbage collector breaks its cycles), and must not stay here for good.
        self._arriving: weakref.WeakKeyDictionary[FrameProtocol, float] = (
            weakref.WeakKeyDictionary()
        )
        # While close() waits: the ones it waits for, and the future it waits on.
        self._awaited: set[FrameProtocol] = set()
        self._all_arrived: asyncio.Future[None] | None = None

    def protocol(self) -> FrameProtocol:
        """The server's protocol factory (called by asyncio for each accepted socket)."""
        proto = FrameProtocol(self._max_body, self._made)
        self._arriving[proto] = asyncio.get_running_loop().time()
        return proto

    def _made(self, proto: FrameProtocol) -> None:
        self._arriving.pop(proto, None)
        if self._all_arrived is not None:
            self._awaited.discard(proto)
            if not self._awaited and not self._all_arrived.done():
                self._all_arrived.set_result(None)
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
        loop = asyncio.get_running_loop()
        # One made longer ago is a TLS handshake that failed (asyncio dropped it with no
        # callback) or a slow one, aborted by the transport if it arrives: waiting for
        # those would make every close after a failed handshake take ARRIVAL_WAIT.
        since = loop.time() - ARRIVAL_WAIT
        self._awaited = {proto for proto, made in self._arriving.items() if made > since}
        if not self._awaited:
            return
        self._all_arrived = loop.create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._all_arrived), ARRIVAL_WAIT)
        self._awaited.clear()
