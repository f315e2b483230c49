"""``peer-ring-kv serve`` with mutual TLS between peers: flags, environment, a live cluster.

Certificates come from ``peer_ring.core.testing.CertificateAuthority``. The cluster test
runs three real ``serve`` processes on 127.0.0.1-3 (one port, as pods), each with its own
certificate (IP SAN), writes and reads through different nodes while rogue clients (no
certificate, another CA) are refused, then rotates one node's certificate on disk and checks
that new connections get the new one, without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
import pytest_asyncio
from cryptography import x509

from peer_ring.core.testing import CertificateAuthority, TLSFiles
from peer_ring.core.transport import GrpcTransport
from peer_ring.core.transport._options import EXCHANGE_PATH, SENDER_KEY
from peer_ring.kv._local_cluster import (
    LocalCluster,
    allocate_addresses,
    loopback_aliases_available,
)
from peer_ring.kv._serve_config import (
    UsageError,
    add_serve_arguments,
    build_store,
    config_from,
)

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
LIMIT = 20.0


def write_files(directory: Path, ca: bytes, key: bytes, cert: bytes) -> dict[str, Path]:
    """Write (atomically, as a secret volume update does) the three files of one node."""
    files = TLSFiles(directory)
    files.write(ca, key, cert)
    return {"ca": files.ca, "key": files.key, "cert": files.cert}


# -- configuration -------------------------------------------------------------------------------


def parse(argv: list[str], env: dict[str, str] | None = None) -> Any:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return config_from(parser.parse_args(argv), env or {})


def test_tls_flags_and_environment(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("CA")
    files = write_files(tmp_path, ca.pem, *ca.issue("n", ips=("127.0.0.1",)))
    flags = [f"--tls-ca={files['ca']}", f"--tls-cert={files['cert']}", f"--tls-key={files['key']}"]
    config = parse(["--listen=127.0.0.1:7101", *flags])
    assert config.tls is not None
    assert (config.tls.ca_file, config.tls.cert_file, config.tls.key_file) == (
        str(files["ca"]),
        str(files["cert"]),
        str(files["key"]),
    )
    assert config.tls.server_name is None and config.tls.require_client_auth
    env = {
        "PEER_RING_TLS_CA": str(files["ca"]),
        "PEER_RING_TLS_CERT": str(files["cert"]),
        "PEER_RING_TLS_KEY": str(files["key"]),
        "PEER_RING_TLS_SERVER_NAME": "peers.example",
    }
    config = parse(["--listen=127.0.0.1:7101"], env)
    assert config.tls.server_name == "peers.example"
    assert parse(["--listen=127.0.0.1:7101"]).tls is None
    # The store gets a TLS transport with the node's limits and token.
    store = build_store(parse(["--listen=127.0.0.1:7101", "--token=t", *flags]))
    transport = store.node.transport
    assert isinstance(transport, GrpcTransport)
    assert transport.limits == store.node.config.transport_limits


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ({"ca"}, "missing --tls-cert, --tls-key"),
        ({"ca", "cert"}, "missing --tls-key"),
        ({"ca", "cert", "key", "nonexistent"}, "is not a file"),
        ({"server-name"}, "needs --tls-ca, --tls-cert and --tls-key"),
        ({"ca", "cert", "key", "empty-name"}, "must not be empty"),
    ],
)
def test_tls_usage_errors(tmp_path: Path, which: set[str], message: str) -> None:
    ca = CertificateAuthority.create("CA")
    files = write_files(tmp_path, ca.pem, *ca.issue("n", ips=("127.0.0.1",)))
    argv = ["--listen=127.0.0.1:7101"]
    for name in ("ca", "cert", "key"):
        if name in which:
            path = tmp_path / "nope" if "nonexistent" in which and name == "key" else files[name]
            argv.append(f"--tls-{name}={path}")
    if "server-name" in which:
        argv.append("--tls-server-name=x")
    if "empty-name" in which:
        argv.append("--tls-server-name= ")
    with pytest.raises(UsageError, match=re.escape(message)):
        parse(argv)


def test_files_that_are_not_pem_are_a_usage_error(tmp_path: Path) -> None:
    paths = write_files(tmp_path, b"not a certificate", b"nor a key", b"nothing")
    config = parse(
        [
            "--listen=127.0.0.1:7101",
            f"--tls-ca={paths['ca']}",
            f"--tls-cert={paths['cert']}",
            f"--tls-key={paths['key']}",
        ]
    )
    with pytest.raises(UsageError, match="no PEM block"):
        build_store(config)


# -- a live cluster ------------------------------------------------------------------------------


class TlsCluster:
    def __init__(
        self, cluster: LocalCluster, ca: CertificateAuthority, files: list[dict[str, Path]]
    ) -> None:
        self.cluster = cluster
        self.ca = ca
        self.files = files


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def tls_cluster(
    require_component: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TlsCluster]:
    require_component(
        "loopback aliases 127.0.0.2 and 127.0.0.3",
        loopback_aliases_available(HOSTS),
        "Linux routes all of 127.0.0.0/8 to lo; elsewhere add the aliases to lo0",
    )
    base = tmp_path_factory.mktemp("tls")
    ca = CertificateAuthority.create("cluster CA")
    files = [
        write_files(base / f"node{i}", ca.pem, *ca.issue(f"node{i}", ips=(host,)))
        for i, host in enumerate(HOSTS)
    ]
    addresses = allocate_addresses(3, hosts=HOSTS)
    cluster = LocalCluster(
        addresses,
        serve_args=["--replication=3", "--partitions=32", "--request-timeout=3"],
    )
    # Each node has its own certificate files: per-node flags, added to its command line.
    for node, node_files in zip(cluster.nodes, files, strict=True):
        node.command += [
            f"--tls-ca={node_files['ca']}",
            f"--tls-cert={node_files['cert']}",
            f"--tls-key={node_files['key']}",
        ]
    async with cluster:
        await cluster.start(ready_within=60)
        yield TlsCluster(cluster, ca, files)


async def exchange_code(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    """Open an Exchange stream as a hand-made client; return the status name it ended with."""
    if credentials is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, credentials)
    async with channel:
        call = channel.stream_stream(
            EXCHANGE_PATH, request_serializer=None, response_deserializer=None
        )(None, metadata=((SENDER_KEY, "rogue:1"),), timeout=5.0)
        # The refusal ends the stream with an RPC error; anything else (a client bug) surfaces.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call.read()
        return (await call.code()).name


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_mtls_cluster_replicates_and_refuses_rogues(tls_cluster: TlsCluster) -> None:
    nodes = tls_cluster.cluster.nodes
    urls = [n.address.url for n in nodes]
    other = CertificateAuthority.create("rogue CA")
    rogue_key, rogue_cert = other.issue("rogue", ips=HOSTS)
    rogues = {
        "plaintext": None,
        "no certificate": grpc.ssl_channel_credentials(tls_cluster.ca.pem),
        "another CA": grpc.ssl_channel_credentials(tls_cluster.ca.pem, rogue_key, rogue_cert),
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as session:
        before = await metric(session, urls[0], "peer_ring_transport_tls_handshakes")
        for i in range(30):
            async with session.put(f"{urls[i % 3]}/kv/k{i}", data=b"v%d" % i) as r:
                assert r.status == 204, await r.text()
            if i % 10 == 0:
                for kind, credentials in rogues.items():
                    code = await asyncio.wait_for(
                        exchange_code(nodes[0].address.peer, credentials), LIMIT
                    )
                    assert code == "UNAVAILABLE", kind
        for i in range(30):
            async with session.get(f"{urls[(i + 1) % 3]}/kv/k{i}", params={"quorum": "3"}) as r:
                assert r.status == 200, await r.text()
                assert await r.read() == b"v%d" % i
        after = await metric(session, urls[0], "peer_ring_transport_tls_handshakes")
        streams = await metric(session, urls[0], "peer_ring_transport_inbound_streams")
    # Every rogue attempt reached the TLS layer and was refused there; only the two peers
    # (and their reconnects, if any) ever got a stream.
    assert after - before >= 9
    assert streams <= 4
    log = nodes[0].log_path.read_text(errors="replace")
    assert "Handshake failed" in log  # gRPC core logs every refused handshake


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_certificate_rotation_on_a_running_node(tls_cluster: TlsCluster) -> None:
    node = tls_cluster.cluster.nodes[1]
    host, _, port = node.address.peer.rpartition(":")
    files = tls_cluster.files[1]

    async def presented() -> str:
        context = ssl.create_default_context(cafile=str(files["ca"]))
        context.check_hostname = False
        context.load_cert_chain(str(tls_cluster.files[0]["cert"]), str(tls_cluster.files[0]["key"]))
        context.set_alpn_protocols(["h2"])
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=context), LIMIT
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.transport.abort()
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()

    assert await presented() == "CN=node1"
    write_files(
        files["ca"].parent, tls_cluster.ca.pem, *tls_cluster.ca.issue("node1-renewed", ips=(host,))
    )
    # The node checks its files at most once a second: poll, bounded.
    deadline = asyncio.get_running_loop().time() + LIMIT
    while (subject := await presented()) != "CN=node1-renewed":
        assert asyncio.get_running_loop().time() < deadline, subject
        await asyncio.sleep(0.2)
    assert node.running  # no restart
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as session:
        async with session.put(f"{node.address.url}/kv/rotated", data=b"yes") as r:
            assert r.status == 204
        async with session.get(f"{tls_cluster.cluster.nodes[2].address.url}/kv/rotated") as r:
            assert await r.read() == b"yes"
        reloads = await metric(session, node.address.url, "peer_ring_transport_certificate_reloads")
    assert reloads >= 1
