"""A peer's identity is bound to its certificate: the address it claims must be one of its SANs.

A node holding a valid certificate of the cluster CA for 127.0.0.2 that claims to be
127.0.0.3 (the sender metadata of the gRPC transport) is refused, so a member cannot
impersonate another one; the honest node is accepted, over each transport (``transports``
of conftest.py). Certificates come from ``peer_ring.core.testing.CertificateAuthority``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from peer_ring.core._errors import PeerRingError
from peer_ring.core._types import Request, Status
from peer_ring.core.testing import CertificateAuthority, free_port
from peer_ring.core.transport import GrpcTransport
from peer_ring.core.transport._identity import claim_refusal
from peer_ring.core.transport._options import EXCHANGE_PATH, SENDER_KEY

LIMIT = 15.0


async def exchange_code(
    address: str, credentials: grpc.ChannelCredentials, sender: str
) -> grpc.StatusCode:
    """Open an Exchange stream claiming ``sender``; return how the call ended."""
    async with grpc.aio.secure_channel(address, credentials) as channel:
        call = channel.stream_stream(
            EXCHANGE_PATH, request_serializer=None, response_deserializer=None
        )(None, metadata=((SENDER_KEY, sender),), timeout=5.0)
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, Exception):
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:  # type: ignore[attr-defined]
                pass
        return await call.code()


@pytest.fixture
async def server(
    tmp_path: Path, transports: Callable[..., Awaitable[Any]]
) -> tuple[GrpcTransport, CertificateAuthority]:
    ca = CertificateAuthority.create("cluster CA")
    files = ca.write_node_files(tmp_path / "server", "server")
    return await transports(tls=files.config()), ca


@pytest.mark.parametrize("transport_kind", ["grpc"])  # the claim is gRPC metadata here
async def test_a_peer_claiming_another_members_address_is_refused(
    server: tuple[GrpcTransport, CertificateAuthority],
) -> None:
    transport, ca = server
    key, cert = ca.issue("node-2", ips=("127.0.0.2",))
    credentials = grpc.ssl_channel_credentials(ca.pem, key, cert)
    honest = await asyncio.wait_for(
        exchange_code(transport.address, credentials, "127.0.0.2:7101"), LIMIT
    )
    assert honest == grpc.StatusCode.OK
    before = transport.stats()["refused_connections"]
    impostor = await asyncio.wait_for(
        exchange_code(transport.address, credentials, "127.0.0.3:7101"), LIMIT
    )
    assert impostor == grpc.StatusCode.PERMISSION_DENIED
    assert transport.stats()["refused_connections"] == before + 1


async def test_transport_nodes_impersonation_refused_honest_node_accepted(
    transports: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    """Real transports: a node with a valid certificate for 127.0.0.2 claims 127.0.0.3."""
    ca = CertificateAuthority.create("cluster CA")
    port = free_port("127.0.0.1", "127.0.0.2", "127.0.0.3")

    async def node(host: str, certified: str) -> Any:
        files = ca.write_node_files(tmp_path / f"{host}-{certified}", certified, ips=(certified,))
        return await transports(host, port, tls=files.config())

    server = await node("127.0.0.1", "127.0.0.1")
    honest = await node("127.0.0.2", "127.0.0.2")
    impostor = await node("127.0.0.3", "127.0.0.2")
    request = Request("t", "echo", payload=b"hi", timeout=5)
    response = await asyncio.wait_for(honest.request(server.address, request), LIMIT)
    assert response.status is Status.OK and bytes(response.payload) == b"hi"
    before = server.stats()["refused_connections"]
    with pytest.raises(PeerRingError):
        await asyncio.wait_for(impostor.request(server.address, request), LIMIT)
    assert server.stats()["refused_connections"] > before


@pytest.mark.parametrize(
    ("sender", "names", "server_name", "allowed"),
    [
        ("127.0.0.2:7101", ["127.0.0.2"], None, True),
        ("127.0.0.3:7101", ["127.0.0.2"], None, False),
        ("[::1]:7101", ["0:0:0:0:0:0:0:1"], None, True),
        ("[::2]:7101", ["::1"], None, False),
        ("Node-1.Peers.Test:7101", ["node-1.peers.test"], None, True),
        ("node-2.peers.test:7101", ["node-1.peers.test"], None, False),
        ("127.0.0.3:7101", [], None, False),
        # A certificate shared by the cluster (one DNS name) cannot tell nodes apart.
        ("127.0.0.3:7101", ["peers.test"], "peers.test", True),
        ("127.0.0.3:7101", ["other.test"], "peers.test", False),
    ],
)
def test_claim_rule(sender: str, names: list[str], server_name: str | None, allowed: bool) -> None:
    assert (claim_refusal(sender, names, server_name) is None) is allowed
