"""TcpTransport.close() right after asyncio accepted a connection leaves nothing open.

asyncio's server accepts a connection in one loop turn and builds its transport in a task
that runs in the next. A ``close()`` that closed the server between the two left that
socket open: ``unclosed transport <_SelectorSocketTransport fd=N read=idle ...>`` once
collected (seen once in 60 runs of test_peer_down_fails_within_the_deadline_with_a_clear_error
on a loaded machine, where peers keep redialling the node that stops). The race is forced
here: the listening socket is readable before the test yields, and ``close()`` is called
in the loop turn after the one whose accept callback queued the set-up task.
"""

from __future__ import annotations

import asyncio
import gc
import select
import socket
import warnings
from collections.abc import AsyncIterator

import pytest

from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import TcpTransport
from peer_ring.core.transport._tcp import split_address
from peer_ring.core.transport._tcp_wire import PREAMBLE


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def no_records(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    return
    yield []  # pragma: no cover - makes this an async generator


async def until_closed(sock: socket.socket) -> bytes:
    """What the server sent before it closed ``sock``'s connection."""
    loop = asyncio.get_running_loop()
    received = b""
    while True:
        try:
            data = await loop.sock_recv(sock, 64)
        except ConnectionResetError:  # aborted with the preamble unread
            return received
        if not data:
            return received
        received += data


def unclosed_after_collection() -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("clients", [1, 3])
async def test_close_just_after_an_accept_closes_that_connection(clients: int) -> None:
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.SelectorEventLoop):
        pytest.skip("the race is in asyncio's selector-loop server")
    server = TcpTransport(f"127.0.0.1:{free_port()}")
    await server.start(echo, no_records)
    socks = [socket.create_connection(split_address(server.address)) for _ in range(clients)]
    try:
        for sock in socks:
            sock.setblocking(False)
        gc.collect()  # nothing of earlier tests may be blamed on this one
        assert server._server is not None
        [listening] = server._server.sockets
        # The kernel completed the handshakes: the next loop turn's select sees the
        # listening socket readable and queues the accept callback after this task.
        readable, _, _ = select.select([listening.fileno()], [], [], 10.0)
        assert readable
        await asyncio.sleep(0)  # this turn: the accept callback runs after this task
        await asyncio.sleep(0)  # next turn: this task runs before the set-up tasks
        await server.close()
        # Every accepted connection was closed by close(), not by the garbage collector.
        for sock in socks:
            # (The connection reached the transport: it was sent the preamble, then closed.)
            assert await asyncio.wait_for(until_closed(sock), 10.0) in (b"", PREAMBLE)
        assert unclosed_after_collection() == []
    finally:
        for sock in socks:
            sock.close()
        await server.close()
