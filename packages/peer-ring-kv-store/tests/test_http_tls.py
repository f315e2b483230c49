"""HTTPS (and client certificates) on the HTTP API, with certificates from ``CertificateAuthority``.

In-process tests serve a real aiohttp server over a one-node KVStore and connect with real TLS
clients: HTTPS works, plain HTTP is refused, a client certificate is required when a CA is
given (refused without one, or with one from another CA), and a rotated certificate or CA on
disk is used by the next connection without a restart (a half-written file is not). A process
test runs ``peer-ring-kv serve`` with the ``--http-tls-*`` flags.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import (
    CertificateAuthority,
    write_file_atomically,
)
from peer_ring.kv import KVStore
from peer_ring.kv._http_tls import HttpTLSConfig, HttpTLSError, ReloadingServerContext
from peer_ring.kv._local_cluster import allocate_addresses
from peer_ring.kv._serve_config import UsageError, add_serve_arguments, config_from
from peer_ring.kv._server import KVHttpApi, KVHttpServer

LIMIT = 20.0


class Files:
    """The server's three files in one directory."""

    def __init__(self, directory: Path, ca: CertificateAuthority, *, with_ca: bool = True) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.cert = directory / "tls.crt"
        self.key = directory / "tls.key"
        self.ca = directory / "ca.crt"
        self.serial = self.install(ca)
        self.with_ca = with_ca

    def install(self, ca: CertificateAuthority, name: str = "server") -> int:
        issued = ca.issue(name, ips=("127.0.0.1",))
        write_file_atomically(self.key, issued.key_pem)
        write_file_atomically(self.cert, issued.cert_pem)
        write_file_atomically(self.ca, ca.pem)
        return issued.serial_number

    def config(self) -> HttpTLSConfig:
        return HttpTLSConfig(
            str(self.cert),
            str(self.key),
            str(self.ca) if self.with_ca else None,
            reload_interval=0.0,
        )


def client_context(
    trust: CertificateAuthority,
    client: CertificateAuthority | None,
    directory: Path,
    name: str = "client",
) -> ssl.SSLContext:
    """A client context trusting ``trust``, presenting a certificate of ``client``."""
    context = ssl.create_default_context(cadata=trust.pem.decode())
    if client is not None:
        directory.mkdir(parents=True, exist_ok=True)
        key, cert = client.issue(name, ips=("127.0.0.1",))
        (directory / f"{name}.key").write_bytes(key)
        (directory / f"{name}.crt").write_bytes(cert)
        context.load_cert_chain(directory / f"{name}.crt", directory / f"{name}.key")
    return context


async def served_serial(port: int, context: ssl.SSLContext) -> int:
    """Serial number of the certificate a new connection to the server gets."""
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context), LIMIT
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


async def get_status(url: str, context: ssl.SSLContext | None) -> int:
    # A new session (so a new connection and handshake) for every request.
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=context if context is not None else False) as r,
    ):
        await r.read()
        return r.status


# -- configuration -------------------------------------------------------------------------------


def parse(argv: list[str], env: dict[str, str] | None = None) -> Any:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return config_from(parser.parse_args(["--listen=127.0.0.1:7101", *argv]), env or {})


def test_flags_and_environment(tmp_path: Path) -> None:
    files = Files(tmp_path, CertificateAuthority.create("CA"))
    config = parse([f"--http-tls-cert={files.cert}", f"--http-tls-key={files.key}"])
    assert config.http_tls == HttpTLSConfig(str(files.cert), str(files.key), None)
    assert config.tls is None  # the peer TLS is a separate setting
    env = {
        "PEER_RING_HTTP_TLS_CERT": str(files.cert),
        "PEER_RING_HTTP_TLS_KEY": str(files.key),
        "PEER_RING_HTTP_TLS_CA": str(files.ca),
    }
    config = parse([], env)
    assert config.http_tls == HttpTLSConfig(str(files.cert), str(files.key), str(files.ca))
    assert parse([]).http_tls is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["cert"], "missing --http-tls-key"),
        (["key"], "missing --http-tls-cert"),
        (["ca"], "missing --http-tls-cert"),
        (["cert", "key", "nofile"], "is not a file"),
    ],
)
def test_incomplete_or_wrong_settings_are_usage_errors(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    files = Files(tmp_path, CertificateAuthority.create("CA"))
    argv = {
        "cert": f"--http-tls-cert={files.cert}",
        "key": f"--http-tls-key={files.key}",
        "ca": f"--http-tls-ca={files.ca}",
        "nofile": f"--http-tls-ca={tmp_path / 'absent.pem'}",
    }
    with pytest.raises(UsageError, match=message):
        parse([argv[f] for f in flags])


def test_unusable_files_fail_at_construction(tmp_path: Path) -> None:
    ca, other = CertificateAuthority.create("CA"), CertificateAuthority.create("other")
    files = Files(tmp_path, ca)
    files.cert.write_bytes(b"not a certificate")
    with pytest.raises(HttpTLSError, match="no PEM block"):
        ReloadingServerContext(files.config())
    # A key that is not the certificate's.
    key, _ = other.issue("x", ips=("127.0.0.1",))
    files.install(ca)
    files.key.write_bytes(key)
    with pytest.raises(HttpTLSError):
        ReloadingServerContext(files.config())


# -- in-process server ---------------------------------------------------------------------------


@pytest.fixture
async def store(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> KVStore:
    (s,) = await start_stores(
        ["127.0.0.1:7101"],
        config=PeerRingConfig(partitions=8, request_timeout=1.0),
        ready=False,
        graceful=True,
        replication=1,
    )
    return s


async def serve(store: KVStore, tls: ReloadingServerContext) -> KVHttpServer:
    api = KVHttpApi(store)
    api.set_ready(True)
    server = KVHttpServer(api, "127.0.0.1", 0, ssl_context=tls.context)
    await server.start()
    return server


async def test_https_works_and_plain_http_is_refused(store: KVStore, tmp_path: Path) -> None:
    ca = CertificateAuthority.create("CA")
    files = Files(tmp_path / "server", ca, with_ca=False)
    server = await serve(store, ReloadingServerContext(files.config()))
    try:
        assert server.url.startswith("https://127.0.0.1:")
        _, port = server.address
        trusting = client_context(ca, None, tmp_path)
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{server.url}/kv/k", data=b"v", ssl=trusting) as r:
                assert r.status == 204
            async with session.get(f"{server.url}/kv/k", ssl=trusting) as r:
                assert await r.read() == b"v"
        # Plain HTTP to the HTTPS port: no answer.
        with pytest.raises(aiohttp.ClientError):
            await get_status(f"http://127.0.0.1:{port}/healthz", None)
        # A client that does not trust the server's CA refuses it.
        with pytest.raises(aiohttp.ClientError):
            await get_status(
                f"{server.url}/healthz",
                client_context(CertificateAuthority.create("x"), None, tmp_path),
            )
    finally:
        await server.stop()


async def test_client_certificate_required_with_a_ca(store: KVStore, tmp_path: Path) -> None:
    ca, foreign = CertificateAuthority.create("CA"), CertificateAuthority.create("foreign")
    files = Files(tmp_path / "server", ca)
    server = await serve(store, ReloadingServerContext(files.config()))
    url = f"{server.url}/healthz"
    try:
        assert await get_status(url, client_context(ca, ca, tmp_path / "good")) == 200
        with pytest.raises(aiohttp.ClientError):
            await get_status(url, client_context(ca, None, tmp_path / "none"))
        with pytest.raises(aiohttp.ClientError):
            await get_status(url, client_context(ca, foreign, tmp_path / "foreign"))
    finally:
        await server.stop()


async def test_rotation_is_used_by_new_connections(store: KVStore, tmp_path: Path) -> None:
    ca = CertificateAuthority.create("CA")
    files = Files(tmp_path / "server", ca)
    tls = ReloadingServerContext(files.config())
    server = await serve(store, tls)
    _, port = server.address
    client = client_context(ca, ca, tmp_path / "client")
    try:
        assert await served_serial(port, client) == files.serial
        # A new leaf certificate: the next handshake presents it.
        rotated = files.install(ca, "server-2")
        assert await served_serial(port, client) == rotated
        assert tls.reloads == 1
        # A half-written certificate is not loaded: the previous one stays in use.
        files.cert.write_bytes(files.cert.read_bytes()[:100])
        assert await served_serial(port, client) == rotated
        assert tls.reloads == 1
        # A CA rotation: clients of the old CA are refused, clients of the new one accepted.
        new_ca = CertificateAuthority.create("CA-2")
        files.install(new_ca, "server-3")
        url = f"{server.url}/healthz"
        with pytest.raises(aiohttp.ClientError):
            await get_status(url, client_context(new_ca, ca, tmp_path / "old-client"))
        assert await get_status(url, client_context(new_ca, new_ca, tmp_path / "new")) == 200
        assert tls.reloads == 2
    finally:
        await server.stop()


# -- the serve process ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_serve_process_speaks_https_with_client_certificates(tmp_path: Path) -> None:
    ca, foreign = CertificateAuthority.create("CA"), CertificateAuthority.create("foreign")
    files = Files(tmp_path / "server", ca)
    (address,) = allocate_addresses(1)
    port = int(address.http.rpartition(":")[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEER_RING_")}
    env["PEER_RING_HTTP_TLS_CA"] = str(files.ca)  # the environment variable is read too
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "peer_ring.kv.cli",
        "serve",
        f"--listen={address.peer}",
        f"--http={address.http}",
        "--replication=1",
        "--partitions=8",
        f"--http-tls-cert={files.cert}",
        f"--http-tls-key={files.key}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any(" ready peer=" in line for line in lines):
                line = (await process.stdout.readline()).decode(errors="replace")
                assert line, "".join(lines)
                lines.append(line)
        base = f"https://{address.http}"
        assert f"http={base}" in lines[-1]
        drain = asyncio.ensure_future(process.stdout.read())
        client = client_context(ca, ca, tmp_path / "client")
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{base}/kv/k", data=b"v", ssl=client) as r:
                assert r.status == 204
            async with session.get(f"{base}/kv/k", ssl=client) as r:
                assert await r.read() == b"v"
        for refused in (
            client_context(ca, None, tmp_path / "none"),
            client_context(ca, foreign, tmp_path / "foreign"),
        ):
            with pytest.raises(aiohttp.ClientError):
                await get_status(f"{base}/healthz", refused)
        with pytest.raises(aiohttp.ClientError):
            await get_status(f"http://{address.http}/healthz", None)
        # Rotation on disk, picked up by the running process (checked at most once a second).
        assert await served_serial(port, client) == files.serial
        rotated = files.install(ca, "server-2")
        # The process checks its files at most once a second, when a handshake starts; no
        # event crosses the process boundary, so probe with new connections (bounded).
        serials = []
        for _ in range(50):
            serials.append(await served_serial(port, client))
            if serials[-1] == rotated:
                break
            await asyncio.sleep(0.2)
        assert serials[-1] == rotated, serials
        process.terminate()
        assert await asyncio.wait_for(process.wait(), LIMIT) == 0
        output = "".join(lines) + (await drain).decode(errors="replace")
        assert "HTTP TLS certificate files changed" in output
        assert "Traceback" not in output
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.slow
async def test_serve_exits_2_on_an_unusable_certificate(tmp_path: Path) -> None:
    files = Files(tmp_path, CertificateAuthority.create("CA"))
    files.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    (address,) = allocate_addresses(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEER_RING_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "peer_ring.kv.cli",
        "serve",
        f"--listen={address.peer}",
        f"--http-tls-cert={files.cert}",
        f"--http-tls-key={files.key}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2, out
    assert b"--http-tls-*:" in out and b"Traceback" not in out
