"""A peer's identity is bound to its certificate: the address it claims must be one of its SANs.

A node holding a valid certificate of the cluster CA for 127.0.0.2 that claims to be
127.0.0.3 (the sender metadata of the gRPC transport) is refused, so a member cannot
impersonate another one; the honest node is accepted. Certificates are generated here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from peer_ring.core._errors import PeerRingError
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import GrpcTransport, TcpTransport, TLSConfig, TransportLimits
from peer_ring.core.transport._identity import claim_refusal
from peer_ring.core.transport._options import EXCHANGE_PATH, SENDER_KEY

LIMIT = 15.0
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)


# -- a small PKI ---------------------------------------------------------------------------------


@dataclass
class Authority:
    """A CA that issues node certificates."""

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, common_name: str, ips: tuple[str, ...] = (), dns: tuple[str, ...] = ()
    ) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) for a node, usable as server and as client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        sans: list[x509.GeneralName] = [x509.IPAddress(IPv4Address(ip)) for ip in ips]
        sans += [x509.DNSName(name) for name in dns]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` the way cert-manager's secret volume does: never half-written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class NodeFiles:
    """The three files of one node's TLSConfig."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def key(self) -> Path:
        return self.directory / "tls.key"

    def write(self, ca_pem: bytes, key_pem: bytes, cert_pem: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Key first, certificate last: a reader that sees the new certificate sees its key.
        write_atomically(self.ca, ca_pem)
        write_atomically(self.key, key_pem)
        write_atomically(self.cert, cert_pem)

    def config(self, **kwargs: Any) -> TLSConfig:
        kwargs.setdefault("reload_interval", 0.0)  # tests check files on every connection
        return TLSConfig(str(self.ca), str(self.cert), str(self.key), **kwargs)


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    yield [b"record"]


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
async def server(tmp_path: Path) -> AsyncIterator[tuple[GrpcTransport, Authority]]:
    ca = Authority.create("cluster CA")
    files = NodeFiles(tmp_path / "server")
    files.write(ca.pem, *ca.issue("server", ips=("127.0.0.1",)))
    transport = GrpcTransport(
        f"127.0.0.1:{free_port('127.0.0.1')}", limits=FAST, tls=files.config()
    )
    await transport.start(echo, no_transfer)
    yield transport, ca
    await transport.close()


async def test_a_peer_claiming_another_members_address_is_refused(
    server: tuple[GrpcTransport, Authority],
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


@pytest.mark.parametrize("kind", [GrpcTransport, TcpTransport])
async def test_transport_nodes_impersonation_refused_honest_node_accepted(
    kind: type[GrpcTransport] | type[TcpTransport], tmp_path: Path
) -> None:
    """Real transports: a node with a valid certificate for 127.0.0.2 claims 127.0.0.3."""
    ca = Authority.create("cluster CA")
    port = free_port("127.0.0.1", "127.0.0.2", "127.0.0.3")
    made: list[Any] = []

    async def node(host: str, certified: str) -> Any:
        files = NodeFiles(tmp_path / f"{host}-{certified}")
        files.write(ca.pem, *ca.issue(certified, ips=(certified,)))
        transport = kind(f"{host}:{port}", limits=FAST, tls=files.config())
        made.append(transport)
        await transport.start(echo, no_transfer)
        return transport

    try:
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
    finally:
        await asyncio.gather(*(t.close() for t in made))


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
