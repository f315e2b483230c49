"""What only the gRPC transport does, over real gRPC on loopback: its token and TLS
credentials, and its wire (raw Exchange streams, a client made from the .proto).

The tests both transports pass are in test_transports.py; this module's ``nodes`` (the
harness of conftest.py) are gRPC ones. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from peer_ring.core._errors import PeerUnavailableError
from peer_ring.core._types import TransferRequest
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.testing import CertificateAuthority
from peer_ring.core.transport._options import EXCHANGE_PATH, SENDER_KEY

#: Upper bound of any single wait in these tests (real seconds). Only reached on a bug.
LIMIT = 15.0

#: ``await nodes(...)``: a started ``TransportNode`` of conftest.py.
NodeFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
def transport_kind() -> str:
    """Every test here is about gRPC (overrides the parametrized fixture of conftest.py)."""
    return "grpc"


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


async def collect_from(node: Any, peer: str) -> list[bytes]:
    out: list[bytes] = []
    async for chunk in node.transport.transfer(peer, TransferRequest("kv", 1), 5.0):
        out.extend(chunk)
    return out


# -- security and bad input ---------------------------------------------------------------------


async def test_token_mismatch_is_refused_and_logged(
    nodes: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a = await nodes(token="alpha")
    b = await nodes(token="beta")
    anonymous = await nodes()
    friend = await nodes(token="beta")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(PeerUnavailableError, match="UNAUTHENTICATED"):
            await bounded(a.request(b, b"x"))
        with pytest.raises(PeerUnavailableError, match="UNAUTHENTICATED"):
            await bounded(anonymous.request(b, b"x"))
    # At least the two refused requests; a refused peer's connection keeps redialling with
    # backoff, so under load a third refused attempt may already be counted.
    assert b.transport.stats()["refused_connections"] >= 2
    assert any("wrong token" in r.message for r in caplog.records)
    assert any("missing token" in r.message for r in caplog.records)
    assert (await bounded(friend.request(b, b"welcome"))).payload == b"welcome"


async def raw_exchange(
    address: str, frames: list[bytes], metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.StatusCode:
    """Send raw bytes on an Exchange stream; return the status the server ended it with."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            EXCHANGE_PATH, request_serializer=None, response_deserializer=None
        )(None, metadata=metadata)
        # A server that refuses the stream at once (no sender metadata) may end the call
        # before a write: the write then raises, and the status is what is checked.
        with contextlib.suppress(grpc.aio.AioRpcError):
            for frame in frames:
                await call.write(frame)
            while await call.read() is not grpc.aio.EOF:  # type: ignore[attr-defined]
                pass
        return await call.code()


async def test_malformed_frame_ends_that_stream_and_the_server_keeps_serving(
    nodes: NodeFactory,
) -> None:
    a = await nodes()
    b = await nodes()
    code = await bounded(
        raw_exchange(b.address, [b"\xff\xff\xff\xff garbage"], ((SENDER_KEY, "x:1"),))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert b.transport.stats()["malformed_frames"] == 1
    # A frame that parses but carries invalid UTF-8 in a string field is malformed too.
    bad_utf8 = b"\x0a\x04\x12\x02\xc3\x28"
    code = await bounded(raw_exchange(b.address, [bad_utf8], ((SENDER_KEY, "x:1"),)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code = await bounded(raw_exchange(b.address, [b"whatever"]))  # no sender metadata
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (await bounded(a.request(b, b"next"))).payload == b"next"


async def test_raw_client_speaking_the_protocol_is_answered(nodes: NodeFactory) -> None:
    """The wire format is what the .proto says: a generated-code client works."""
    b = await nodes()
    frame = pb.Frame(requests=[pb.Request(id=7, namespace="t", command="c", payload=b"hi")])
    async with grpc.aio.insecure_channel(b.address) as channel:
        call = channel.stream_stream(
            EXCHANGE_PATH,
            request_serializer=pb.Frame.SerializeToString,
            response_deserializer=pb.Frame.FromString,
        )(None, metadata=((SENDER_KEY, "raw:1"),))
        await call.write(frame)
        reply = await bounded(call.read())
        call.cancel()
    assert list(reply.responses) == [pb.Response(id=7, status=pb.OK, payload=b"hi")]


async def test_transfer_token_is_checked(nodes: NodeFactory) -> None:
    async def export(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
        yield [b"secret"]

    a = await nodes(token="wrong")
    b = await nodes(token="right", transfer=export)
    with pytest.raises(PeerUnavailableError, match="UNAUTHENTICATED"):
        await bounded(collect_from(a, b.address))
    assert b.transport.stats()["refused_connections"] == 1


# -- TLS ------------------------------------------------------------------------------------------


async def test_mutual_tls(nodes: NodeFactory) -> None:
    authority = CertificateAuthority.create("peer-ring test CA")
    key, cert = authority.issue("node", ips=("127.0.0.1",))
    ca = authority.pem
    server_creds = grpc.ssl_server_credentials([(key, cert)], ca, require_client_auth=True)
    channel_creds = grpc.ssl_channel_credentials(ca, key, cert)
    a = await nodes(server_credentials=server_creds, channel_credentials=channel_creds)
    b = await nodes(server_credentials=server_creds, channel_credentials=channel_creds)
    assert (await bounded(a.request(b, b"secret"))).payload == b"secret"
    # A node without a client certificate cannot get in.
    outsider = await nodes(channel_credentials=grpc.ssl_channel_credentials(ca))
    with pytest.raises(PeerUnavailableError):
        await bounded(outsider.request(b, b"let me in"))
    plain = await nodes()
    with pytest.raises(PeerUnavailableError):
        await bounded(plain.request(b, b"let me in"))
