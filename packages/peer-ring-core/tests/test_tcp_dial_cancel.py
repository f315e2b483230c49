"""A TCP dial cancelled just as its connection is accepted closes that connection.

``Dialer.dial`` runs the connect and handshake in a task of their own (so the connect
timeout can cancel them). When the caller is cancelled (the transport closes, or a
transfer's caller goes away) after that task returned an accepted connection but before
the caller resumed, the connection was dropped open: a ``ResourceWarning`` (an error under
pytest) once the transport was collected. The race is forced here: the dial's task
schedules the caller's cancellation right before it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from peer_ring.core._clock import SystemClock
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import TcpTransport, TransportLimits
from peer_ring.core.transport._tcp_outbound import Dialer
from peer_ring.core.transport._tcp_wire import KIND_EXCHANGE, KIND_TRANSFER, FrameProtocol


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def no_records(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    return
    yield []  # pragma: no cover - makes this an async generator


class CancelledAsAccepted(Dialer):
    """Cancels ``caller`` as the handshake succeeds, before the caller can resume."""

    caller: asyncio.Future[FrameProtocol] | None = None
    accepted: list[FrameProtocol]

    async def _dial(self, peer: str, kind: int, patience: float) -> FrameProtocol:
        proto = await super()._dial(peer, kind, patience)
        self.accepted.append(proto)
        assert self.caller is not None
        # Runs before the caller's wake-up, which the task's completion schedules next.
        asyncio.get_running_loop().call_soon(self.caller.cancel)
        return proto


@pytest.mark.parametrize("kind", [KIND_EXCHANGE, KIND_TRANSFER])
async def test_a_dial_cancelled_as_it_is_accepted_closes_the_connection(kind: int) -> None:
    server = TcpTransport(f"127.0.0.1:{free_port()}")
    await server.start(echo, no_records)
    try:
        dialer = CancelledAsAccepted(
            "127.0.0.1:1", None, TransportLimits(connect_timeout=5.0), SystemClock(), None, None
        )
        dialer.accepted = []
        caller = asyncio.ensure_future(dialer.dial(server.address, kind))
        dialer.caller = caller
        await asyncio.wait({caller}, timeout=10.0)
        assert caller.cancelled()
        # The handshake did succeed: the race happened, and its connection was closed.
        [proto] = dialer.accepted
        assert proto.transport is not None
        assert proto.transport.is_closing()
    finally:
        await server.close()
