"""What only the TCP transport does: run on uvloop. The tests both transports pass are in
test_transports.py; TCP's handshake, framing fuzz and TLS are in test_security_tcp.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from peer_ring.core._errors import UnknownCommandError
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import TcpTransport, TransportLimits

#: Upper bound of any single wait in these tests (real seconds). Only reached on a bug.
LIMIT = 15.0
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    raise UnknownCommandError("no transfers here")
    yield []  # pragma: no cover - makes this an async generator


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


# -- uvloop ---------------------------------------------------------------------------------------


def test_round_trip_and_transfer_on_uvloop() -> None:
    """uvloop's transports are not asyncio.Transport subclasses: the protocol must not care."""
    uvloop = pytest.importorskip("uvloop")

    async def export(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
        yield [b"r1", b"r2"]

    async def main() -> None:
        a = TcpTransport(f"127.0.0.1:{free_port('127.0.0.1')}", limits=FAST)
        b = TcpTransport(f"127.0.0.1:{free_port('127.0.0.1')}", limits=FAST)
        await a.start(echo, no_transfer)
        await b.start(echo, export)
        try:
            resp = await bounded(a.request(b.address, Request("t", "e", b"k", b"hi")))
            assert resp.payload == b"hi"
            got = [r async for c in a.transfer(b.address, TransferRequest("kv", 1), 5.0) for r in c]
            assert got == [b"r1", b"r2"]
        finally:
            await a.close()
            await b.close()

    uvloop.run(main())
