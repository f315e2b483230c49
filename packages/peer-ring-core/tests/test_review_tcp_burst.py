"""Review of the TCP transport's direct write scheduling nothing (80a2c87) and the peer-link
code shared by both transports (007c782), against a hand-driven peer on loopback.

Since 80a2c87 a lone request is written by its caller without a callback, so a burst to an
idle peer sends two requests alone before the writer coalesces the rest. What a caller
relies on, seen from the wire (``raw_tcp_peer``):

- a burst made in one loop turn reaches the peer in submission order, in at most three
  frames (two alone, the rest together), and each caller gets its own answer however the
  answers are ordered and framed;
- requests cancelled in the turn they were made are never answered to anyone, the others
  are, and nothing stays counted on the connection;
- requests the peer never answers fail at their own deadline with ``RequestTimeoutError``
  while those it answers succeed, and the connection serves on afterwards.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from peer_ring.core._errors import RequestTimeoutError
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.testing import free_port
from peer_ring.core.transport import TcpTransport, TransportLimits
from peer_ring.core.transport._tcp_wire import ACCEPT, FRAME, PREAMBLE, message

#: Upper bound of any single wait (real seconds). Only reached on a bug.
LIMIT = 20.0
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)
BURST = 20

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    return
    yield  # pragma: no cover - makes this an async generator


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


@pytest.fixture
async def client() -> AsyncIterator[TcpTransport]:
    transport = TcpTransport(f"127.0.0.1:{free_port()}", limits=FAST)
    await transport.start(echo, no_transfer)
    yield transport
    await transport.close()


@pytest.fixture
def fake_server(raw_tcp_peer: Any) -> Callable[[Script], Awaitable[str]]:
    """A hand-driven TCP-transport peer: it accepts the HELLO, then runs a script."""

    async def serve(script: Script) -> str:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(PREAMBLE + message(ACCEPT))
            await script(reader, writer)

        address: str = await raw_tcp_peer(accepted)
        return address

    return serve


class Wire:
    """What the hand-driven peer read: the requests of each frame, and the ids cancelled."""

    def __init__(self) -> None:
        self.frames: list[list[pb.Request]] = []
        self.cancelled: set[int] = set()

    @property
    def requests(self) -> list[pb.Request]:
        return [r for frame in self.frames for r in frame]

    async def read_until(self, reader: asyncio.StreamReader, count: int) -> None:
        """Read frames until ``count`` requests came (cancels noted, frames of cancels only
        not kept)."""
        while len(self.requests) < count:
            length, kind = struct.unpack(">IB", await reader.readexactly(5))
            body = await reader.readexactly(length - 1)
            assert kind == FRAME
            frame = pb.Frame.FromString(body)
            self.cancelled.update(frame.cancels)
            if frame.requests:
                self.frames.append(list(frame.requests))


def answers(*requests: pb.Request) -> bytes:
    """One frame answering ``requests`` with their own payload reversed."""
    frame = pb.Frame(responses=[pb.Response(id=r.id, payload=r.payload[::-1]) for r in requests])
    return message(FRAME, frame.SerializeToString())


def burst(client: TcpTransport, peer: str, count: int, timeout: float = 5.0) -> list[Any]:
    """``count`` requests made in one loop turn (no await between them)."""
    return [
        client.request(peer, Request("t", "echo", b"k%d" % i, b"p%03d" % i, 0, "", timeout))
        for i in range(count)
    ]


async def test_a_burst_arrives_in_order_in_few_frames_and_each_caller_gets_its_answer(
    fake_server: Callable[[Script], Awaitable[str]], client: TcpTransport
) -> None:
    wire = Wire()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await wire.read_until(reader, BURST)
        # Answers in reverse order, split over two frames.
        back = wire.requests[::-1]
        writer.write(answers(*back[: BURST // 3]) + answers(*back[BURST // 3 :]))
        await asyncio.sleep(LIMIT)  # keep the connection open (cancelled after the test)

    peer = await fake_server(script)
    await bounded(client.connect(peer))
    calls = burst(client, peer, BURST)
    out = await bounded(asyncio.gather(*calls))
    assert [r.payload for r in out] == [(b"p%03d" % i)[::-1] for i in range(BURST)]
    assert [r.payload for r in wire.requests] == [b"p%03d" % i for i in range(BURST)]
    assert len(wire.frames) <= 3, [len(f) for f in wire.frames]
    assert len({r.id for r in wire.requests}) == BURST
    assert client._peers[peer].load() == (0, 0)


async def test_requests_cancelled_in_the_turn_they_were_made_are_answered_to_no_one(
    fake_server: Callable[[Script], Awaitable[str]], client: TcpTransport
) -> None:
    """Every third request of a burst is cancelled at once: the peer may have been sent
    some of them (the first ones leave as they are made), it answers whatever it got, and
    only the others' callers get answers, each its own."""
    wire = Wire()
    kept = [i for i in range(BURST) if i % 3]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await wire.read_until(reader, len(kept))
        answered = 0
        for _ in range(BURST + 2):  # bounded: every request read is answered once
            got = wire.requests
            writer.write(answers(*got[answered:][::-1]))
            answered = len(got)
            await wire.read_until(reader, answered + 1)  # a request sent later, if any

    peer = await fake_server(script)
    await bounded(client.connect(peer))
    calls = burst(client, peer, BURST)
    for i, call in enumerate(calls):
        if i % 3 == 0:
            call.cancel()
    out = await bounded(asyncio.gather(*(calls[i] for i in kept)))
    assert [r.payload for r in out] == [(b"p%03d" % i)[::-1] for i in kept]
    assert all(calls[i].cancelled() for i in range(0, BURST, 3))
    assert {b"p%03d" % i for i in kept} <= {r.payload for r in wire.requests}
    later = await bounded(client.request(peer, Request("t", "echo", b"k", b"later", 0, "", 5)))
    assert later.payload == b"retal"
    assert client._peers[peer].load() == (0, 0)


async def test_unanswered_requests_of_a_burst_fail_at_their_deadline_the_others_succeed(
    fake_server: Callable[[Script], Awaitable[str]], client: TcpTransport
) -> None:
    """A burst of requests with a 0.3 s deadline; the peer answers the even ones only:
    the odd ones fail with RequestTimeoutError, the even ones get their answers, and the
    connection serves a request made afterwards."""
    wire = Wire()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await wire.read_until(reader, BURST)
        writer.write(answers(*(r for r in wire.requests if int(r.payload[1:]) % 2 == 0)))
        await wire.read_until(reader, BURST + 1)
        writer.write(answers(wire.requests[-1]))
        await asyncio.sleep(LIMIT)

    peer = await fake_server(script)
    await bounded(client.connect(peer))
    calls = burst(client, peer, BURST, timeout=0.3)
    out = await bounded(asyncio.gather(*calls, return_exceptions=True))
    for i, outcome in enumerate(out):
        if i % 2:
            assert isinstance(outcome, RequestTimeoutError), (i, outcome)
        else:
            assert isinstance(outcome, Response) and outcome.payload == (b"p%03d" % i)[::-1]
    later = await bounded(client.request(peer, Request("t", "echo", b"k", b"later", 0, "", 5)))
    assert later.payload == b"retal"
    assert client._peers[peer].load() == (0, 0)
