"""Error path of certificate rotation: the files disappear mid-rotation.

A node serving mutual TLS from certificate files loses them (a secret volume being
swapped, a deploy script mid-copy). New connections must keep using the previous
credentials, the problem is logged once as a warning, and when the new files appear
they are picked up. Real gRPC over loopback; certificates come from
``peer_ring.core.testing.CertificateAuthority``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import CertificateAuthority, TLSFiles, free_port
from peer_ring.core.transport import GrpcTransport, TransportLimits

LIMIT = 15.0  # real seconds; only reached on a bug
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)


# -- the test ------------------------------------------------------------------------------------


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    raise NotImplementedError
    yield []  # pragma: no cover - makes this an async generator


async def test_certificate_files_missing_mid_rotation_keep_the_old_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = CertificateAuthority.create("CA")
    server_files = ca.write_node_files(tmp_path / "server", "server")
    made: list[GrpcTransport] = []

    async def transport(files: TLSFiles) -> GrpcTransport:
        t = GrpcTransport(f"127.0.0.1:{free_port('127.0.0.1')}", tls=files.config(), limits=FAST)
        made.append(t)
        await t.start(echo, no_transfer)
        return t

    try:
        server = await transport(server_files)
        req = Request("kv", "get", b"k", b"x", 1, "", 5.0)
        first = await transport(ca.write_node_files(tmp_path / "c1", "c1"))
        assert (await asyncio.wait_for(first.request(server.address, req), LIMIT)).payload == b"x"
        # mid-rotation: the server's certificate and key are gone
        server_files.cert.unlink()
        server_files.key.unlink()
        caplog.set_level(logging.WARNING, logger="peer_ring.core.transport")
        second = await transport(ca.write_node_files(tmp_path / "c2", "c2"))  # a new connection
        assert (await asyncio.wait_for(second.request(server.address, req), LIMIT)).payload == b"x"
        warnings = [r for r in caplog.records if "keeping the previous certificate" in r.message]
        assert warnings and all(r.levelno == logging.WARNING for r in warnings)
        assert server.stats()["certificate_reloads"] == 0
        # the rotation completes: the next connection picks the new files up
        server_files.write(ca.pem, *ca.issue("server-2", ips=("127.0.0.1",)))
        third = await transport(ca.write_node_files(tmp_path / "c3", "c3"))
        assert (await asyncio.wait_for(third.request(server.address, req), LIMIT)).payload == b"x"
        assert server.stats()["certificate_reloads"] == 1
    finally:
        await asyncio.gather(*(t.close() for t in made))
