"""Peer authentication: mutual TLS from reloaded certificate files, and the cluster token.

Certificates come from ``peer_ring.core.testing.CertificateAuthority``: a cluster CA, node
certificates with IP SANs (peers are dialled by IP:port) or a shared DNS name, and "rogue"
material from another CA. Transports come from conftest.py (``transports``). Every network
wait is bounded; no sleep is used to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography import x509

from peer_ring.core import PeerRing, PeerRingConfig
from peer_ring.core._errors import InvalidArgumentError, PeerUnavailableError
from peer_ring.core._types import Request, Status, TransferRequest
from peer_ring.core.testing import CertificateAuthority, FixedDiscovery, TLSFiles, free_port
from peer_ring.core.transport import GrpcTransport, TLSConfig, TransportLimits
from peer_ring.core.transport._options import EXCHANGE_PATH, SENDER_KEY
from peer_ring.core.transport._tls import CertificateFiles

#: Upper bound of any single wait (real seconds); only reached on a bug.
LIMIT = 15.0
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)
SHARED_NAME = "peers.peer-ring.test"


# -- transports ----------------------------------------------------------------------------------


Factory = Callable[..., Awaitable[Any]]


@pytest.fixture
def transport_kind() -> str:
    """``transports`` (conftest.py) are gRPC ones here, unless a test parametrizes this."""
    return "grpc"


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


async def ask(src: Any, dst: Any, payload: bytes = b"x") -> bytes:
    target = dst if isinstance(dst, str) else dst.address
    response = await bounded(src.request(target, Request("t", "echo", payload=payload, timeout=5)))
    assert response.status is Status.OK
    return bytes(response.payload)


async def server_certificate(address: str, files: TLSFiles) -> x509.Certificate:
    """The certificate the server at ``address`` presents to a new connection now."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(files.ca))
    context.check_hostname = False  # the IP SAN is checked by gRPC; here only the cert matters
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_alpn_protocols(["h2"])
    _, writer = await bounded(asyncio.open_connection(host, int(port), ssl=context))
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        # Abort: a polite TLS close would wait for the server, which waits for HTTP/2.
        writer.transport.abort()
    return x509.load_der_x509_certificate(der)


async def raw_exchange_code(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    metadata: tuple[tuple[str, str], ...] = ((SENDER_KEY, "rogue:1"),),
    options: tuple[tuple[str, Any], ...] = (),
) -> grpc.StatusCode:
    """Open an Exchange stream as a hand-made client; return how the call ended."""
    if credentials is None:
        channel = grpc.aio.insecure_channel(address, options=options)
    else:
        channel = grpc.aio.secure_channel(address, credentials, options=options)
    async with channel:
        call = channel.stream_stream(
            EXCHANGE_PATH, request_serializer=None, response_deserializer=None
        )(None, metadata=metadata, timeout=5.0)
        # A refused call fails whatever is done next (AioRpcError, or a failed batch).
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, Exception):
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:  # type: ignore[attr-defined]
                pass
        return await call.code()


# -- mutual TLS ----------------------------------------------------------------------------------


async def test_mtls_peers_talk_and_every_kind_of_rogue_is_refused(
    transports: Factory, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ca = CertificateAuthority.create("cluster CA")
    other = CertificateAuthority.create("someone else's CA")
    nodes = [
        await transports(
            tls=ca.write_node_files(tmp_path / f"n{i}", f"n{i}").config(), token="cluster-secret"
        )
        for i in range(2)
    ]
    a, b = nodes
    assert await ask(a, b, b"hello") == b"hello"
    assert await ask(b, a, b"back") == b"back"
    before = b.stats()

    # 1. TLS but no client certificate; 2. a certificate from another CA; 3. plaintext.
    no_cert = grpc.ssl_channel_credentials(ca.pem)
    other_key, other_cert = other.issue("rogue", ips=("127.0.0.1",))
    foreign = grpc.ssl_channel_credentials(ca.pem, other_key, other_cert)
    for credentials in (no_cert, foreign, None):
        code = await bounded(raw_exchange_code(b.address, credentials))
        assert code == grpc.StatusCode.UNAVAILABLE
    # 4. A valid certificate (a stolen one, say) but the wrong token: refused by the token.
    key, cert = ca.issue("insider", ips=("127.0.0.1",))
    insider = grpc.ssl_channel_credentials(ca.pem, key, cert)
    code = await bounded(
        raw_exchange_code(
            b.address, insider, ((SENDER_KEY, "insider:1"), ("authorization", "Bearer guess"))
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED

    after = b.stats()
    # Every attempt reached the TLS layer; none got a stream.
    assert after["tls_handshakes"] - before["tls_handshakes"] >= 3
    assert after["inbound_streams"] == before["inbound_streams"]
    assert after["refused_connections"] - before["refused_connections"] == 1
    # The legitimate peers were never disturbed.
    assert await ask(a, b, b"still here") == b"still here"
    assert a.stats()["stream_failures"] == 0
    # TLS refusals happen in gRPC's C core, which logs each one to stderr.
    assert "Handshake failed" in capfd.readouterr().err


async def test_a_transport_node_without_certificate_cannot_join(
    transports: Factory, tmp_path: Path
) -> None:
    ca = CertificateAuthority.create("cluster CA")
    other = CertificateAuthority.create("other CA")
    server = await transports(tls=ca.write_node_files(tmp_path / "server", "server").config())
    outsider = await transports(
        tls=other.write_node_files(tmp_path / "outsider", "outsider").config()
    )
    plain = await transports()
    with pytest.raises(PeerUnavailableError):
        await ask(outsider, server)
    with pytest.raises(PeerUnavailableError):
        await ask(plain, server)
    assert server.stats()["inbound_streams"] == 0


async def test_shared_server_name_instead_of_ip_sans(transports: Factory, tmp_path: Path) -> None:
    """Certificates without IP SANs work when the cluster verifies one shared DNS name."""
    ca = CertificateAuthority.create("cluster CA")
    made = []
    for name in ("a", "b"):
        files = TLSFiles(tmp_path / name)
        files.write(ca.pem, *ca.issue(name, dns=(SHARED_NAME,)))
        made.append(files)
    a = await transports(tls=made[0].config(server_name=SHARED_NAME))
    b = await transports(tls=made[1].config(server_name=SHARED_NAME))
    assert await ask(a, b) == b"x"
    # Without the override the dialled IP is checked, and these certificates lack it.
    c = await transports(tls=made[0].config())
    with pytest.raises(PeerUnavailableError):
        await ask(c, b)


async def test_three_peer_ring_nodes_with_mtls_replicate_while_a_rogue_is_refused(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.create("cluster CA")
    other = CertificateAuthority.create("rogue CA")
    port = free_port("127.0.0.1", "127.0.0.2", "127.0.0.3")
    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    addresses = [f"{h}:{port}" for h in hosts]
    config = PeerRingConfig(partitions=32, replication=3, quorum=2, transport_limits=FAST)
    stores: list[dict[bytes, bytes]] = []
    nodes = []
    for i, (host, address) in enumerate(zip(hosts, addresses, strict=True)):
        files = ca.write_node_files(tmp_path / f"node{i}", f"node{i}", ips=(host,))
        transport = GrpcTransport(address, limits=FAST, tls=files.config())
        node = PeerRing(FixedDiscovery(address, addresses), config=config, transport=transport)
        store: dict[bytes, bytes] = {}
        stores.append(store)

        def put(ctx: Any, key: bytes, payload: bytes, store: dict[bytes, bytes] = store) -> bytes:
            store[key] = payload
            return b""

        def get(ctx: Any, key: bytes, payload: bytes, store: dict[bytes, bytes] = store) -> bytes:
            return store.get(key, b"")

        node.register("t", "put", put)
        node.register("t", "get", get)
        nodes.append(node)

    rogue_key, rogue_cert = other.issue("rogue", ips=hosts)
    rogue_creds = grpc.ssl_channel_credentials(ca.pem, rogue_key, rogue_cert)
    refused = 0
    attempts = 60

    async def rogue() -> None:
        nonlocal refused
        for i in range(attempts):  # bounded in count, and by the test's deadline
            code = await raw_exchange_code(addresses[i % 3], rogue_creds)
            refused += code == grpc.StatusCode.UNAVAILABLE

    written = 0
    try:
        await bounded(asyncio.gather(*(n.start() for n in nodes)))
        rogue_task = asyncio.ensure_future(rogue())
        # Replicated writes from every node for as long as the rogue keeps trying.
        while (written < 100 or not rogue_task.done()) and written < 5000:
            key = f"key-{written}".encode()
            writer = nodes[written % 3]
            result = await bounded(writer.execute("t", "put", key, b"v%d" % written))
            assert len(result.ok_replies) >= 2, result
            replies = await bounded(result.all_replies())
            assert all(r.ok for r in replies), replies
            written += 1
        await bounded(rogue_task)
        for i in range(written):
            key = f"key-{i}".encode()
            # Quorum 2 acknowledged each write, and all 3 replicas applied it.
            assert [s.get(key) for s in stores] == [b"v%d" % i] * 3
    finally:
        await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)
    assert refused == attempts
    assert written >= 100


# -- certificate rotation ------------------------------------------------------------------------


@pytest.mark.parametrize("transport_kind", ["grpc", "tcp"])
async def test_rotated_certificate_is_used_by_new_connections(
    transports: Factory, tmp_path: Path
) -> None:
    ca = CertificateAuthority.create("cluster CA")
    a_files = ca.write_node_files(tmp_path / "a", "a")
    b_files = ca.write_node_files(tmp_path / "b", "b")
    a = await transports(tls=a_files.config())
    b = await transports(tls=b_files.config())
    assert await ask(a, b) == b"x"
    first = await server_certificate(b.address, a_files)
    assert first.subject.rfc4514_string() == "CN=b"

    # cert-manager renews b's certificate: same CA, new key, new serial.
    b_files.write(ca.pem, *ca.issue("b-renewed", ips=("127.0.0.1",)))
    second = await server_certificate(b.address, a_files)
    assert second.subject.rfc4514_string() == "CN=b-renewed"
    assert b.stats()["certificate_reloads"] == 1
    # The established stream is untouched; a new connection works with the new certificate.
    assert await ask(a, b) == b"x"
    a.forget_peer(b.address)
    assert await ask(a, b) == b"x"
    assert a.stats()["stream_failures"] == 0
    # a's client side picks up its own rotated certificate on its next connection too.
    a_files.write(ca.pem, *ca.issue("a-renewed", ips=("127.0.0.1",)))
    a.forget_peer(b.address)
    assert await ask(a, b) == b"x"
    assert a.stats()["certificate_reloads"] == 1


@pytest.mark.parametrize("transport_kind", ["grpc", "tcp"])
async def test_transfers_run_over_tls(transports: Factory, tmp_path: Path) -> None:
    ca = CertificateAuthority.create("cluster CA")
    a = await transports(tls=ca.write_node_files(tmp_path / "a", "a").config())
    b = await transports(tls=ca.write_node_files(tmp_path / "b", "b").config())
    got = [r async for chunk in a.transfer(b.address, TransferRequest("kv", 1), 5.0) for r in chunk]
    assert got == [b"record"]


async def test_ca_rotation_without_restart(transports: Factory, tmp_path: Path) -> None:
    """Move a running cluster from CA1 to CA2: trust both, reissue, then drop CA1."""
    ca1 = CertificateAuthority.create("CA1")
    ca2 = CertificateAuthority.create("CA2")
    a_files = ca1.write_node_files(tmp_path / "a", "a")
    b_files = ca1.write_node_files(tmp_path / "b", "b")
    a = await transports(tls=a_files.config())
    b = await transports(tls=b_files.config())
    assert await ask(a, b) == b"x"

    bundle = ca1.pem + ca2.pem
    a_files.write(bundle, *ca2.issue("a2", ips=("127.0.0.1",)))
    b_files.write(bundle, *ca2.issue("b2", ips=("127.0.0.1",)))
    a.forget_peer(b.address)  # a new connection, with a's new client certificate
    assert await ask(a, b) == b"x"
    # Drop CA1 everywhere: only CA2 certificates get in from now on.
    a_files.write(ca2.pem, *ca2.issue("a3", ips=("127.0.0.1",)))
    b_files.write(ca2.pem, *ca2.issue("b3", ips=("127.0.0.1",)))
    a.forget_peer(b.address)
    assert await ask(a, b) == b"x"
    old_key, old_cert = ca1.issue("old", ips=("127.0.0.1",))
    old_client = grpc.ssl_channel_credentials(ca2.pem, old_key, old_cert)
    assert await bounded(raw_exchange_code(b.address, old_client)) == grpc.StatusCode.UNAVAILABLE
    assert a.stats()["certificate_reloads"] == 2
    assert b.stats()["certificate_reloads"] == 2


async def test_reconnect_uses_the_rotated_client_certificate(
    transports: Factory, tmp_path: Path
) -> None:
    """A broken stream reconnects on a channel built from the current files."""
    ca1 = CertificateAuthority.create("CA1")
    ca2 = CertificateAuthority.create("CA2")
    a_files = ca1.write_node_files(tmp_path / "a", "a")
    b_files = ca1.write_node_files(tmp_path / "b", "b")
    a = await transports(tls=a_files.config())
    b = await transports(tls=b_files.config())
    assert await ask(a, b) == b"x"
    address = b.address

    # a's files move to CA2 while its stream to b is up; then b is replaced by a node that
    # trusts CA2 only, on the same address. a must reconnect with its new certificate.
    a_files.write(ca2.pem, *ca2.issue("a2", ips=("127.0.0.1",)))
    await b.close()
    b2_files = ca2.write_node_files(tmp_path / "b2", "b2")
    host, _, port = address.rpartition(":")
    b2 = await transports(host, int(port), tls=b2_files.config())

    async def until_answered() -> None:
        for _ in range(500):  # bounded; each failed attempt waits for the reconnect
            try:
                await ask(a, b2)
                return
            except PeerUnavailableError:
                await asyncio.sleep(0.05)  # the transport's own backoff runs meanwhile
        raise AssertionError("a never reconnected with its new certificate")

    await bounded(until_answered())
    assert a.stats()["certificate_reloads"] >= 1


def test_half_written_files_keep_the_previous_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("CA")
    files = ca.write_node_files(tmp_path / "n", "n")
    now = [0.0]
    certs = CertificateFiles(files.config(reload_interval=5.0), monotonic=lambda: now[0])
    original = certs.current
    key, cert = ca.issue("new", ips=("127.0.0.1",))
    files.cert.write_bytes(cert[: len(cert) // 2])  # a copy in progress
    now[0] = 1.0
    assert not certs.refresh()  # within the interval: not even looked at
    now[0] = 6.0
    assert not certs.refresh()  # incomplete PEM: refused
    assert certs.current == original
    files.key.write_bytes(key)
    files.cert.write_bytes(cert)
    now[0] = 12.0
    assert certs.refresh()
    assert certs.current.cert == cert and certs.version == 1


def test_tls_configuration_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="TLS"):
        GrpcTransport(
            "127.0.0.1:1", tls=TLSConfig(str(tmp_path / "no-ca"), str(tmp_path / "c"), "k")
        )
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(InvalidArgumentError, match="no PEM block"):
        CertificateFiles(
            TLSConfig(str(tmp_path / "empty"), str(tmp_path / "empty"), str(tmp_path / "empty"))
        )
    with pytest.raises(InvalidArgumentError, match="reload_interval"):
        TLSConfig("a", "b", "c", reload_interval=-1)
    ca = CertificateAuthority.create("CA")
    files = ca.write_node_files(tmp_path / "n", "n")
    with pytest.raises(InvalidArgumentError, match="not both"):
        GrpcTransport(
            "127.0.0.1:1",
            tls=files.config(),
            channel_credentials=grpc.ssl_channel_credentials(ca.pem),
        )


# -- the shared token ----------------------------------------------------------------------------


async def test_only_the_exact_token_is_accepted(transports: Factory) -> None:
    # Near misses a byte-by-byte or prefix comparison would get wrong are all refused. (That
    # the comparison is constant-time, hmac.compare_digest, is a review matter: timing is
    # not asserted in tests.)
    a = await transports(token="s3cret")
    b = await transports(token="s3cret")
    assert await ask(a, b) == b"x"
    for i, near in enumerate(["s3cre", "s3cret ", "s3cret0", "s3creT", "S3CRET", "", "xs3cret"]):
        code = await bounded(
            raw_exchange_code(
                b.address,
                None,
                ((SENDER_KEY, f"near:{i}"), ("authorization", f"Bearer {near}")),
            )
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED, near
    assert b.stats()["refused_connections"] == 7
    assert await ask(a, b, b"still") == b"still"


async def test_token_refusals_are_counted_and_their_logs_thinned(
    transports: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await transports(token="right")
    attempts = 30
    with caplog.at_level(logging.WARNING, logger="peer_ring.core.transport"):
        for i in range(attempts):
            code = await bounded(
                raw_exchange_code(
                    server.address,
                    None,
                    ((SENDER_KEY, f"rogue:{i}"), ("authorization", f"Bearer wrong{i}")),
                )
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED
    assert server.stats()["refused_connections"] == attempts
    lines = [r for r in caplog.records if "wrong token" in r.getMessage()]
    # Logged, but not once per attempt: a client in a loop cannot flood the log.
    assert 1 <= len(lines) <= 2
    assert "rogue:0" in lines[0].getMessage()


async def test_transfers_use_rotated_certificates_too(transports: Factory, tmp_path: Path) -> None:
    """A channel used only for transfers (no Exchange stream) is renewed before each call."""
    ca1 = CertificateAuthority.create("CA1")
    ca2 = CertificateAuthority.create("CA2")
    a_files = ca1.write_node_files(tmp_path / "a", "a")
    a = await transports(tls=a_files.config())
    b = await transports(tls=ca1.write_node_files(tmp_path / "b", "b").config())
    address = b.address

    async def pull() -> list[bytes]:
        out: list[bytes] = []
        async for chunk in a.transfer(address, TransferRequest("t", 1), 5.0):
            out.extend(chunk)
        return out

    assert await bounded(pull()) == [b"record"]
    # a moves to CA2, and b is replaced (same address) by a node trusting CA2 only: the old
    # channel's connection is gone, and a new handshake must present a's new certificate.
    a_files.write(ca2.pem, *ca2.issue("a2", ips=("127.0.0.1",)))
    await b.close()
    host, _, port = address.rpartition(":")
    await transports(host, int(port), tls=ca2.write_node_files(tmp_path / "b2", "b2").config())
    assert await bounded(pull()) == [b"record"]
