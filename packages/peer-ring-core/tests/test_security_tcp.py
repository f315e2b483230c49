"""Security of the TCP transport: mutual TLS from reloaded certificate files, the cluster
token, refusal of a peer of the other transport kind, and hardened decoding (a fuzz of the
framing: every malformed input closes that connection, is counted and logged, and the node
keeps serving). Certificates come from ``peer_ring.core.testing.CertificateAuthority``,
transports from conftest.py; certificate rotation and transfers over TLS are tested for both
transports in test_security_tls.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from peer_ring.core._errors import PeerUnavailableError
from peer_ring.core._types import Request, Status, TransferRequest
from peer_ring.core.testing import CertificateAuthority
from peer_ring.core.transport import GrpcTransport, TransportLimits
from peer_ring.core.transport._tcp_wire import (
    FRAME,
    HELLO,
    KIND_EXCHANGE,
    PREAMBLE,
    encode_hello,
    message,
)

#: Upper bound of any single wait (real seconds); only reached on a bug.
LIMIT = 15.0


# -- transports ----------------------------------------------------------------------------------


Factory = Callable[..., Awaitable[Any]]


@pytest.fixture
def transport_kind() -> str:
    """``transports`` (conftest.py) are TCP ones here."""
    return "tcp"


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


async def ask(src: Any, dst: Any, payload: bytes = b"x") -> bytes:
    target = dst if isinstance(dst, str) else dst.address
    response = await bounded(src.request(target, Request("t", "echo", payload=payload, timeout=5)))
    assert response.status is Status.OK
    return bytes(response.payload)


# -- TLS -----------------------------------------------------------------------------------------


async def test_mtls_peers_talk_and_outsiders_are_refused(
    transports: Factory, tmp_path: Path
) -> None:
    ca = CertificateAuthority.create("cluster CA")
    other = CertificateAuthority.create("someone else's CA")
    a = await transports(tls=ca.write_node_files(tmp_path / "a", "a").config(), token="s3cret")
    b = await transports(tls=ca.write_node_files(tmp_path / "b", "b").config(), token="s3cret")
    assert await ask(a, b, b"hello") == b"hello"
    assert await ask(b, a, b"back") == b"back"
    outsider = await transports(
        tls=other.write_node_files(tmp_path / "o", "o").config(), token="s3cret"
    )
    plain = await transports(token="s3cret")
    with pytest.raises(PeerUnavailableError):
        await ask(outsider, b)
    with pytest.raises(PeerUnavailableError):
        await ask(plain, b)
    # A valid certificate but the wrong token: refused by the token check.
    insider = await transports(tls=ca.write_node_files(tmp_path / "i", "i").config(), token="guess")
    with pytest.raises(PeerUnavailableError, match="wrong cluster token"):
        await ask(insider, b)
    stats = b.stats()
    assert stats["inbound_streams"] == 1  # a's only
    assert stats["refused_connections"] == 1
    assert stats["tls_handshakes"] >= 3
    assert await ask(a, b, b"still here") == b"still here"
    assert a.stats()["stream_failures"] == 0


# -- token and transport kind --------------------------------------------------------------------


async def test_only_the_exact_token_is_accepted(
    transports: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    b = await transports(token="right")
    wrong = await transports(token="righ")
    missing = await transports()
    friend = await transports(token="right")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(PeerUnavailableError, match="wrong cluster token"):
            await ask(wrong, b)
        with pytest.raises(PeerUnavailableError, match="missing cluster token"):
            await ask(missing, b)
        with pytest.raises(PeerUnavailableError, match="cluster token"):
            await bounded(anext(aiter(wrong.transfer(b.address, TransferRequest("kv", 1), 5.0))))
    # Each of the three attempts was refused; a client that reconnects under load (its
    # first connection timed out before the refusal arrived) may add one more refusal.
    assert b.stats()["refused_connections"] >= 3
    assert any("refused a connection" in r.message for r in caplog.records)
    assert await ask(friend, b, b"welcome") == b"welcome"


async def test_a_grpc_peer_and_a_tcp_peer_refuse_each_other_clearly(
    transports: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    tcp = await transports()
    grpc_node = await transports(kind=GrpcTransport)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(PeerUnavailableError, match="transport='grpc'"):
            await ask(tcp, grpc_node)
        with pytest.raises(PeerUnavailableError):
            await ask(grpc_node, tcp)
        await bounded(until(lambda: tcp.stats()["malformed_frames"] >= 1))
    assert any("HTTP/2" in r.getMessage() for r in caplog.records)
    assert tcp.stats()["inbound_streams"] == 0


async def until(condition: Callable[[], bool]) -> None:
    # A counter has no event to wait on; bounded by the caller.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


# -- hardened decoding: a fuzz of the framing -----------------------------------------------------


def hello(sender: str = "fuzz:1") -> bytes:
    return PREAMBLE + message(HELLO, encode_hello(KIND_EXCHANGE, sender, None))


def fuzz_inputs(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cases = [
        b"",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        PREAMBLE[:5] + b"\x09T\n",  # another protocol version
        PREAMBLE + struct.pack(">IB", 0xFFFFFFFF, HELLO),  # oversized length
        PREAMBLE + struct.pack(">IB", 0, HELLO),  # empty message
        PREAMBLE + message(HELLO, b"\x01\xff\xff"),  # HELLO lengths beyond its body
        PREAMBLE + message(FRAME, b"no hello first"),
        hello() + message(FRAME, b"\xff\xff\xff\xff garbage"),
        hello() + message(FRAME, b"\x0a\x04\x12\x02\xc3\x28"),  # invalid UTF-8 in a field
        hello() + message(99, b"unknown type"),
        hello() + struct.pack(">IB", 64 * 1024 * 1024, FRAME),  # over max_message_bytes
    ]
    for _ in range(40):
        prefix = rng.choice([b"", PREAMBLE, hello()])
        cases.append(prefix + rng.randbytes(rng.randrange(1, 200)))
    return cases


async def send_raw(address: str, data: bytes) -> bytes:
    """Send ``data``, half-close, and return what the node wrote before closing."""
    host, _, port = address.rpartition(":")
    reader, writer = await bounded(asyncio.open_connection(host, int(port)))
    try:
        writer.write(data)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        return await bounded(reader.read())
    except ConnectionError:
        return b""
    finally:
        writer.transport.abort()


async def test_fuzzed_framing_closes_the_connection_and_the_node_keeps_serving(
    transports: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    limits = TransportLimits(
        backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0, max_message_bytes=1 << 20
    )
    b = await transports(limits=limits)
    a = await transports(limits=limits)
    assert await ask(a, b, b"before") == b"before"
    with caplog.at_level(logging.WARNING):
        for data in fuzz_inputs(seed=int(os.environ.get("FUZZ_SEED", "23"))):
            await send_raw(b.address, data)
            # After every input the node still answers a well-behaved peer.
            assert await ask(a, b, b"ok") == b"ok"
    stats = b.stats()
    assert stats["malformed_frames"] >= 8
    assert a.stats()["stream_failures"] == 0
    # Logged, but rate-limited: far fewer lines than malformed inputs.
    lines = [r for r in caplog.records if "closed the connection" in r.getMessage()]
    assert 1 <= len(lines) < stats["malformed_frames"]
