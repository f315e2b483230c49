"""Error path of certificate rotation: the files disappear mid-rotation.

A node serving mutual TLS from certificate files loses them (a secret volume being
swapped, a deploy script mid-copy). New connections must keep using the previous
credentials, the problem is logged once as a warning, and when the new files appear
they are picked up. Real gRPC over loopback; the small PKI is copied from
``test_security_tls.py`` (test modules cannot import each other).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import GrpcTransport, TLSConfig, TransportLimits

LIMIT = 15.0  # real seconds; only reached on a bug
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)


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


def node_files(tmp_path: Path, name: str, ca: Authority, host: str = "127.0.0.1") -> NodeFiles:
    files = NodeFiles(tmp_path / name)
    files.write(ca.pem, *ca.issue(name, ips=(host,)))
    return files


# -- the test ------------------------------------------------------------------------------------


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    raise NotImplementedError
    yield []  # pragma: no cover - makes this an async generator


async def test_certificate_files_missing_mid_rotation_keep_the_old_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = Authority.create("CA")
    server_files = node_files(tmp_path, "server", ca)
    made: list[GrpcTransport] = []

    async def transport(files: NodeFiles) -> GrpcTransport:
        t = GrpcTransport(f"127.0.0.1:{free_port('127.0.0.1')}", tls=files.config(), limits=FAST)
        made.append(t)
        await t.start(echo, no_transfer)
        return t

    try:
        server = await transport(server_files)
        req = Request("kv", "get", b"k", b"x", 1, "", 5.0)
        first = await transport(node_files(tmp_path, "c1", ca))
        assert (await asyncio.wait_for(first.request(server.address, req), LIMIT)).payload == b"x"
        # mid-rotation: the server's certificate and key are gone
        server_files.cert.unlink()
        server_files.key.unlink()
        caplog.set_level(logging.WARNING, logger="peer_ring.core.transport")
        second = await transport(node_files(tmp_path, "c2", ca))  # a new connection
        assert (await asyncio.wait_for(second.request(server.address, req), LIMIT)).payload == b"x"
        warnings = [r for r in caplog.records if "keeping the previous certificate" in r.message]
        assert warnings and all(r.levelno == logging.WARNING for r in warnings)
        assert server.stats()["certificate_reloads"] == 0
        # the rotation completes: the next connection picks the new files up
        server_files.write(ca.pem, *ca.issue("server-2", ips=("127.0.0.1",)))
        third = await transport(node_files(tmp_path, "c3", ca))
        assert (await asyncio.wait_for(third.request(server.address, req), LIMIT)).payload == b"x"
        assert server.stats()["certificate_reloads"] == 1
    finally:
        await asyncio.gather(*(t.close() for t in made))
