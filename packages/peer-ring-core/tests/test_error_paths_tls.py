"""Error path of certificate rotation: the files disappear mid-rotation.

A node serving mutual TLS from certificate files loses them (a secret volume being
swapped, a deploy script mid-copy). New connections must keep using the previous
credentials, the problem is logged once as a warning, and when the new files appear
they are picked up. Real sockets over loopback, for each transport (``transport_kind`` and
``transports`` of conftest.py); certificates come from
``peer_ring.core.testing.CertificateAuthority``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from peer_ring.core._types import Request
from peer_ring.core.testing import CertificateAuthority, TLSFiles

LIMIT = 15.0  # real seconds; only reached on a bug


# -- the test ------------------------------------------------------------------------------------


async def test_certificate_files_missing_mid_rotation_keep_the_old_credentials(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    transports: Callable[..., Awaitable[Any]],
) -> None:
    ca = CertificateAuthority.create("CA")
    server_files = ca.write_node_files(tmp_path / "server", "server")

    async def transport(files: TLSFiles) -> Any:
        return await transports(tls=files.config())

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
