"""The TCP transport against peers that break the protocol, over real loopback sockets.

A hand-driven socket plays the misbehaving side: a client that sends a bad ``HELLO``,
opens more connections than allowed or a broken transfer request, and a server that
answers a transfer with garbage, an unknown message, a reset or a refusal. Each case
must end in the documented typed error or refusal, be counted, and leave the transport
serving well-behaved peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from peer_ring.core._errors import (
    NotRunningError,
    OverloadedError,
    PeerUnavailableError,
    RemoteError,
)
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import TcpTransport, TransportLimits
from peer_ring.core.transport._codec import encode_transfer_request, transfer_chunks
from peer_ring.core.transport._tcp_wire import (
    ACCEPT,
    CHUNK,
    END,
    FRAME,
    HELLO,
    INVALID,
    KIND_EXCHANGE,
    KIND_TRANSFER,
    OK,
    OVERLOADED,
    PREAMBLE,
    REFUSE,
    TRANSFER_REQ,
    decode_status,
    encode_hello,
    encode_status,
    message,
)

#: Upper bound of any single wait (real seconds); only reached on a bug.
LIMIT = 15.0
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)
REQUEST = TransferRequest("t", 3, ())


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def two_records(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    yield [b"r1", b"r2"]


@pytest.fixture
async def transports() -> AsyncIterator[Callable[..., Awaitable[TcpTransport]]]:
    made: list[TcpTransport] = []

    async def make(limits: TransportLimits = FAST) -> TcpTransport:
        transport = TcpTransport(f"127.0.0.1:{free_port('127.0.0.1')}", limits=limits)
        made.append(transport)
        await transport.start(echo, two_records)
        return transport

    yield make
    await asyncio.gather(*(t.close() for t in made))


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


async def answers(src: TcpTransport, dst: TcpTransport) -> bool:
    request = Request("t", "echo", payload=b"ping", timeout=5)
    response = await bounded(src.request(dst.address, request))
    return bool(response.status is Status.OK and response.payload == b"ping")


# -- a raw client against the transport's server side ---------------------------------------


class RawPeer:
    """One hand-driven connection: preamble, then whole messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def dial(cls, address: str, hello: bytes | None) -> RawPeer:
        host, _, port = address.rpartition(":")
        reader, writer = await bounded(asyncio.open_connection(host, int(port)))
        peer = cls(reader, writer)
        writer.write(PREAMBLE + (message(HELLO, hello) if hello is not None else b""))
        assert await bounded(reader.readexactly(len(PREAMBLE))) == PREAMBLE
        return peer

    async def send(self, kind: int, body: bytes = b"") -> None:
        self.writer.write(message(kind, body))
        await self.writer.drain()

    async def read(self) -> tuple[int, bytes] | None:
        """The next message, or None when the other side closed."""
        try:
            length, kind = struct.unpack(">IB", await bounded(self.reader.readexactly(5)))
            return kind, await bounded(self.reader.readexactly(length - 1))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def dial() -> AsyncIterator[Callable[[str, bytes | None], Awaitable[RawPeer]]]:
    peers: list[RawPeer] = []

    async def open_one(address: str, hello: bytes | None) -> RawPeer:
        peers.append(await RawPeer.dial(address, hello))
        return peers[-1]

    yield open_one
    for peer in peers:
        await peer.close()


def hello(kind: int = KIND_EXCHANGE, sender: str = "raw:1") -> bytes:
    return encode_hello(kind, sender, None)


async def test_a_hello_without_a_sender_is_refused_as_invalid(transports: Any, dial: Any) -> None:
    b, a = await transports(), await transports()
    peer = await dial(b.address, hello(sender=""))
    kind, body = await peer.read() or (0, b"")
    assert (kind, decode_status(body)) == (REFUSE, (INVALID, "no sender address in HELLO"))
    assert await peer.read() is None  # and closed
    assert b.stats()["refused_connections"] == 1
    assert await answers(a, b)


async def test_an_unknown_connection_kind_is_refused_as_invalid(transports: Any, dial: Any) -> None:
    b = await transports()
    peer = await dial(b.address, hello(kind=9))
    kind, body = await peer.read() or (0, b"")
    assert (kind, decode_status(body)) == (REFUSE, (INVALID, "unknown connection kind 9"))
    assert b.stats()["refused_connections"] == 1


async def test_a_first_message_that_is_not_hello_closes_and_is_counted(
    transports: Any, dial: Any
) -> None:
    b, a = await transports(), await transports()
    peer = await dial(b.address, None)
    await peer.send(FRAME, b"no hello first")
    assert await peer.read() is None
    assert b.stats()["malformed_frames"] == 1
    assert await answers(a, b)


async def test_inbound_streams_over_the_limit_are_refused_as_overloaded(
    transports: Any, dial: Any
) -> None:
    b = await transports(
        TransportLimits(backoff_initial=0.02, connect_timeout=2.0, max_inbound_streams=1)
    )
    first = await dial(b.address, hello(sender="raw:1"))
    assert await first.read() == (ACCEPT, b"")
    second = await dial(b.address, hello(sender="raw:2"))
    kind, body = await second.read() or (0, b"")
    code, reason = decode_status(body)
    assert (kind, code) == (REFUSE, OVERLOADED)
    assert "max_inbound_streams=1" in reason
    assert b.stats()["refused_overload"] == 1 and b.stats()["refused_connections"] == 0
    # A message of another type on the accepted stream ends it (counted), freeing the slot.
    await first.send(HELLO, b"again")
    assert await first.read() is None
    assert b.stats()["malformed_frames"] == 1
    third = await dial(b.address, hello(sender="raw:3"))
    assert await third.read() == (ACCEPT, b"")


async def test_transfers_over_the_limit_are_refused_and_a_broken_request_frees_its_slot(
    transports: Any, dial: Any
) -> None:
    b = await transports(
        TransportLimits(backoff_initial=0.02, connect_timeout=2.0, max_inbound_transfers=1)
    )
    holder = await dial(b.address, hello(KIND_TRANSFER))
    assert await holder.read() == (ACCEPT, b"")  # holds the only transfer slot
    refused = await dial(b.address, hello(KIND_TRANSFER, "raw:2"))
    kind, body = await refused.read() or (0, b"")
    code, reason = decode_status(body)
    assert (kind, code) == (REFUSE, OVERLOADED) and "max_inbound_transfers=1" in reason
    # The holder sends something else than a transfer request: closed, counted, slot freed.
    await holder.send(FRAME, b"not a transfer request")
    assert await holder.read() is None
    assert b.stats()["malformed_frames"] == 1
    # A request body that is not a TransferRequest: the same.
    garbled = await dial(b.address, hello(KIND_TRANSFER, "raw:3"))
    assert await garbled.read() == (ACCEPT, b"")
    await garbled.send(TRANSFER_REQ, b"\xff\xff\xff")
    assert await garbled.read() is None
    assert b.stats()["malformed_frames"] == 2
    # A client that goes away before asking frees its slot too.
    quitter = await dial(b.address, hello(KIND_TRANSFER, "raw:4"))
    assert await quitter.read() == (ACCEPT, b"")
    quitter.writer.write_eof()
    assert await quitter.read() is None
    # Every slot is free again: a well-formed transfer is served in full.
    good = await dial(b.address, hello(KIND_TRANSFER, "raw:5"))
    assert await good.read() == (ACCEPT, b"")
    await good.send(TRANSFER_REQ, encode_transfer_request(REQUEST))
    (chunk,) = transfer_chunks([b"r1", b"r2"], 1 << 20)
    assert await good.read() == (CHUNK, chunk)
    assert await good.read() == (END, encode_status(OK, ""))


# -- a raw server against the transport's transfer client ------------------------------------


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def fake_peer(raw_tcp_peer: Any) -> Callable[[Script], Awaitable[str]]:
    """A hand-driven server (``raw_tcp_peer`` of conftest.py): it reads the HELLO, then
    runs a script."""
    serve: Callable[[Script], Awaitable[str]] = raw_tcp_peer
    return serve


def accept_then(*messages: bytes, reset: bool = False, hold: asyncio.Event | None = None) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(PREAMBLE + message(ACCEPT))
        (length,) = struct.unpack(">I", await reader.readexactly(4))
        await reader.readexactly(length)  # the TRANSFER_REQ
        for m in messages:
            writer.write(m)
        await writer.drain()
        if hold is not None:
            await hold.wait()
        if reset:  # an RST instead of a FIN: the reader sees a connection error
            sock = writer.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return script


async def pull(a: TcpTransport, peer: str) -> list[list[bytes]]:
    """The chunks of a transfer from ``peer``, as the caller receives them."""
    out: list[list[bytes]] = []

    async def run() -> None:
        async for chunk in a.transfer(peer, REQUEST, timeout=5.0):
            out.append(chunk)

    await bounded(run())
    return out


async def test_a_malformed_chunk_is_a_remote_error_and_counted(
    transports: Any, fake_peer: Any
) -> None:
    a = await transports()
    peer = await fake_peer(accept_then(message(CHUNK, b"\xff\xff\xff\xff")))
    with pytest.raises(RemoteError, match=f"malformed transfer chunk from {peer}"):
        await pull(a, peer)
    assert a.stats()["malformed_frames"] == 1


async def test_an_unexpected_message_in_a_transfer_is_a_remote_error(
    transports: Any, fake_peer: Any
) -> None:
    a = await transports()
    peer = await fake_peer(accept_then(message(42, b"?")))
    with pytest.raises(RemoteError, match="unexpected message type 42 in a transfer"):
        await pull(a, peer)


async def test_empty_chunks_are_skipped_and_records_arrive_in_order(
    transports: Any, fake_peer: Any
) -> None:
    a = await transports()
    (chunk,) = transfer_chunks([b"x", b"y"], 1 << 20)
    script = accept_then(
        message(CHUNK, b""), message(CHUNK, chunk), message(END, encode_status(OK, ""))
    )
    assert await pull(a, await fake_peer(script)) == [[b"x", b"y"]]  # no empty chunk


async def test_a_closed_or_reset_transfer_is_peer_unavailable(
    transports: Any, fake_peer: Any
) -> None:
    a = await transports()
    (chunk,) = transfer_chunks([b"x"], 1 << 20)
    closed = await fake_peer(accept_then(message(CHUNK, chunk)))
    with pytest.raises(PeerUnavailableError, match="connection closed during a transfer"):
        await pull(a, closed)
    reset = await fake_peer(accept_then(message(CHUNK, chunk), reset=True))
    with pytest.raises(PeerUnavailableError, match="transfer broke"):
        await pull(a, reset)


async def test_a_transfer_in_progress_fails_as_not_running_when_the_transport_closes(
    transports: Any, fake_peer: Any
) -> None:
    a = await transports()
    hold = asyncio.Event()
    (chunk,) = transfer_chunks([b"x"], 1 << 20)
    peer = await fake_peer(accept_then(message(CHUNK, chunk), hold=hold))
    got: list[bytes] = []
    first = asyncio.Event()

    async def run() -> None:
        async for records in a.transfer(peer, REQUEST, timeout=5.0):
            got.extend(records)
            first.set()

    task = asyncio.ensure_future(run())
    await bounded(first.wait())
    await a.close()
    hold.set()
    with pytest.raises(NotRunningError):
        await bounded(task)
    assert got == [b"x"]


@pytest.mark.parametrize(
    ("answer", "error", "match"),
    [
        (PREAMBLE + message(REFUSE, encode_status(OVERLOADED, "busy")), OverloadedError, "busy"),
        (PREAMBLE + message(7, b""), PeerUnavailableError, "unexpected message type 7"),
        (b"\x00\x00\x12\x04\x00\x00\x00\x00\x00", PeerUnavailableError, "speaks HTTP/2"),
        (b"", PeerUnavailableError, "closed the connection during the handshake"),
    ],
)
async def test_a_bad_handshake_answer_fails_the_transfer_with_its_reason(
    transports: Any, fake_peer: Any, answer: bytes, error: type[Exception], match: str
) -> None:
    a = await transports()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    with pytest.raises(error, match=match):
        await pull(a, await fake_peer(script))
