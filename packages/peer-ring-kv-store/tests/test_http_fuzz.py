"""Malformed HTTP against a real ``peer-ring-kv serve`` process, and the API's bearer token.

A one-node ``serve`` (with ``--http-token``) gets thousands of Hypothesis-generated requests
over raw sockets (asyncio streams), since an HTTP client library refuses to send most of
them: bad methods and versions, bad paths and percent-encodings, huge and malformed headers,
bad query values, invalid or conflicting ``Content-Length``, chunked garbage, bodies that
do not match, random bytes. Every case must be answered with a well-formed status line and
never a 500, or the connection closed, within a deadline (never a hang); answers of the
API itself are JSON with an ``error`` message. Then the process must be alive, its memory
grown by less than a generous bound (RSS from ``/proc``), and it must serve normal requests.

Scale with ``PEER_RING_FUZZ_SCALE`` (default 1: about 2,000 cases).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FixedDiscovery, MemoryNetwork
from peer_ring.kv import KVStore
from peer_ring.kv._local_cluster import LocalCluster, NodeAddress, allocate_addresses
from peer_ring.kv._serve_config import UsageError, config_from, http_address
from peer_ring.kv._server import KVHttpApi, KVHttpServer

SCALE = max(1, int(os.environ.get("PEER_RING_FUZZ_SCALE", "1")))
TOKEN = "fuzz-token-0123456789"
MAX_VALUE = 64 * 1024
CASE_LIMIT = 10.0
RSS_GROWTH_LIMIT = 64 << 20
STATUS_LINE = re.compile(rb"^HTTP/\d\.\d (\d{3}) ")  # aiohttp echoes the version asked


# -- the node under test --------------------------------------------------------------------------


@dataclass
class Served:
    """A running serve process and what the fuzz observed."""

    cluster: LocalCluster
    address: NodeAddress
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.http.rpartition(":")
        return host, int(port)

    def rss(self) -> int:
        pid = self.cluster.nodes[0].pid
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the module: the cases run on it one by one (Hypothesis is sync)."""
    with asyncio.Runner() as r:
        yield r


@pytest.fixture(scope="module")
def served(runner: asyncio.Runner, require_component: Any) -> Iterator[Served]:
    require_component("/proc (Linux)", os.path.exists("/proc/self/status"), "RSS is read there")
    address = allocate_addresses(1)[0]
    cluster = LocalCluster(
        [address],
        serve_args=[
            "--replication=1",
            "--partitions=16",
            f"--max-value-bytes={MAX_VALUE}",
            "--max-bytes=8M",  # the store is bounded: growth beyond it would be a leak
            "--log-level=warning",
        ],
        env={"PEER_RING_HTTP_TOKEN": TOKEN},
    )
    runner.run(cluster.start(ready_within=60))
    try:
        yield Served(cluster, address)
    finally:
        runner.run(cluster.close())


# -- request strategies ---------------------------------------------------------------------------

METHODS = st.one_of(
    st.sampled_from(
        [b"GET", b"PUT", b"DELETE", b"HEAD", b"POST", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT"]
    ),
    st.sampled_from([b"get", b"G\x00T", b"", b"PUT PUT", b"\xff\xfe"]),
    st.binary(min_size=1, max_size=12),
)
KEY_TEXT = st.text(max_size=40)
PERCENT_JUNK = st.sampled_from(
    ["%", "%Z", "%ZZ", "%FF", "%C3%28", "%00", "%2F", "%%", "%e2%82", "%F0%9F%98%80", "%u1234"]
)
SEGMENTS = st.one_of(
    KEY_TEXT.map(lambda t: quote(t, safe="")),
    KEY_TEXT,  # unencoded: spaces, '#', '?', controls
    st.lists(st.one_of(PERCENT_JUNK, st.text(max_size=4)), max_size=6).map("".join),
    st.integers(1000, 20_000).map(lambda n: "k" * n),  # long keys (and over-long lines)
)
PATHS = st.one_of(
    SEGMENTS.map(lambda s: "/kv/" + s),
    st.sampled_from(
        ["/kv", "/kv/", "/kv//", "/cluster", "/healthz", "/readyz", "/metrics", "/", "*", ""]
    ),
    st.sampled_from(["http://example.invalid/kv/a", "//kv/a", "/kv/../cluster", "/kv/a/b/c"]),
    st.text(max_size=30).map(lambda t: "/" + t),
)
QUERY_VALUES = st.one_of(
    st.sampled_from(
        ["1", "0", "-1", "3", "99999999999999999999", "1.5", "nan", "inf", "-inf", "1e309", ""]
    ),
    st.text(max_size=8).map(lambda t: quote(t, safe="")),
    PERCENT_JUNK,
)
QUERIES = st.one_of(
    st.just(""),
    st.lists(
        st.tuples(
            st.sampled_from(["ttl", "replication", "quorum", "qourum", "", "ttl[]"]),
            QUERY_VALUES,
        ),
        max_size=4,
    ).map(lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs)),
    st.sampled_from(["?", "?&&", "?ttl", "?=1", "?ttl=1&ttl=2", "?%zz=1"]),
)
VERSIONS = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1", b""]
)
AUTH = st.one_of(
    st.just(f"Bearer {TOKEN}".encode()),
    st.just(f"Bearer {TOKEN}".encode()),
    st.sampled_from([b"", b"Bearer", b"Bearer ", b"Basic dXNlcjpwYXNz", b"bearer " + b"x" * 64]),
    st.binary(max_size=40).map(lambda b: b"Bearer " + b.replace(b"\r", b"").replace(b"\n", b"")),
)
CONTENT_LENGTHS = st.one_of(
    st.integers(0, 70_000).map(lambda n: str(n).encode()),
    st.sampled_from([b"-1", b"abc", b"1e3", b" 5", b"0x10", b"99999999999999999999999", b""]),
)
CHUNKS = st.one_of(
    st.lists(st.binary(max_size=300), max_size=4).map(
        lambda parts: b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
    ),
    st.sampled_from(
        [
            b"zz\r\nhello\r\n0\r\n\r\n",  # a chunk size that is no hex number
            b"ffffffffffffffffffff\r\nx\r\n",  # an absurd chunk size
            b"5\r\nhello",  # the stream stops mid-body
            b"5;ext=1\r\nhello\r\n0\r\n\r\n",
            b"-1\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",  # chunk longer than announced
        ]
    ),
    st.binary(max_size=200),
)


WELL_FORMED_METHODS = st.sampled_from([b"GET", b"PUT", b"DELETE", b"HEAD", b"POST", b"OPTIONS"])


def field_value(data: bytes) -> bytes:
    """``data`` without the control characters that HTTP forbids in a header value."""
    return bytes(b for b in data if (b >= 0x20 and b != 0x7F) or b == 0x09)


@st.composite
def well_formed(draw: st.DrawFn) -> bytes:
    """Valid HTTP/1.1 framing around hostile content: reaches the router and the handlers."""
    method = draw(WELL_FORMED_METHODS)
    target = (draw(PATHS) + draw(QUERIES)).encode("utf-8", "surrogatepass")
    target = target.replace(b" ", b"%20").replace(b"\r", b"").replace(b"\n", b"") or b"/"
    headers = [b"Host: localhost"]
    if draw(st.integers(0, 4)) > 0:
        headers.append(b"Authorization: " + field_value(draw(AUTH)))
    body = b""
    if method in (b"PUT", b"POST") or draw(st.integers(0, 4)) == 0:
        body = draw(
            st.one_of(st.binary(max_size=512), st.integers(60_000, 70_000).map(lambda n: b"v" * n))
        )
        if draw(st.integers(0, 3)) == 0:
            headers.append(b"Transfer-Encoding: chunked")
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        else:
            headers.append(b"Content-Length: %d" % len(body))
    if draw(st.integers(0, 9)) == 0:
        headers.append(b"Expect: 100-continue")
    extra = draw(
        st.lists(
            st.tuples(
                st.sampled_from([b"X-A", b"Accept", b"Content-Type", b"Cookie", b"Range"]),
                st.binary(max_size=60).map(field_value),
            ),
            max_size=4,
        )
    )
    headers += [name + b": " + value for name, value in extra]
    return b"%s %s HTTP/1.1\r\n%s\r\n\r\n%s" % (method, target, b"\r\n".join(headers), body)


@st.composite
def chaotic(draw: st.DrawFn) -> bytes:
    """Anything that pretends to be HTTP: broken framing, versions, headers, bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=2048))  # not HTTP at all
    method = draw(METHODS)
    target = (draw(PATHS) + draw(QUERIES)).encode("utf-8", "surrogatepass")
    version = draw(VERSIONS)
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    headers: list[bytes] = []
    if draw(st.booleans()) or version == b"HTTP/1.1":
        headers.append(b"Host: " + draw(st.sampled_from([b"localhost", b"", b"a" * 300])))
    if draw(st.integers(0, 3)) > 0:
        headers.append(b"Authorization: " + draw(AUTH))
    body = b""
    framing = draw(st.sampled_from(["none", "length", "chunked", "both", "lying"]))
    if framing in ("length", "lying", "both"):
        body = draw(st.binary(max_size=2000))
        length = str(len(body)).encode() if framing != "lying" else draw(CONTENT_LENGTHS)
        headers.append(b"Content-Length: " + length)
        if draw(st.integers(0, 9)) == 0:
            headers.append(b"Content-Length: " + draw(CONTENT_LENGTHS))  # a second one
        if length.isdigit() and int(length) <= 70_000:
            # Send at least what was announced: the case must not hinge on the server
            # waiting for bytes that never come (the extra bytes are a bogus next request).
            body += b"\x00" * max(0, int(length) - len(body))
    if framing in ("chunked", "both"):
        headers.append(
            b"Transfer-Encoding: "
            + draw(st.sampled_from([b"chunked", b"gzip, chunked", b"chunked, identity", b"xyz"]))
        )
        body = draw(CHUNKS)
    if draw(st.integers(0, 9)) == 0:
        headers.append(b"Expect: " + draw(st.sampled_from([b"100-continue", b"200-ok", b""])))
    extra = draw(
        st.lists(
            st.one_of(
                st.tuples(
                    st.sampled_from([b"X-A", b"Connection", b"Accept"]), st.binary(max_size=40)
                ),
                st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=12)),  # bad names
                st.tuples(st.just(b"X-Huge"), st.integers(1000, 40_000).map(lambda n: b"v" * n)),
                st.tuples(st.just(b" folded"), st.just(b"continuation")),  # obs-fold
            ),
            max_size=5,
        )
    )
    headers += [
        name + b": " + value.replace(b"\r", b"").replace(b"\n", b"") for name, value in extra
    ]
    if draw(st.integers(0, 29)) == 0:
        headers += [b"X-Many-%d: x" % i for i in range(draw(st.integers(100, 400)))]
    head = method + b" " + target + b" " + version + eol + eol.join(headers)
    return head + eol + eol + body


def requests() -> st.SearchStrategy[bytes]:
    return st.one_of(well_formed(), well_formed(), chaotic())


# -- one case -------------------------------------------------------------------------------------

#: Seconds without any answer after which the server is taken to be waiting for more input
#: (a body shorter than announced, an unfinished chunked stream): legitimate, not a hang.
QUIET = 1.0


async def send(served: Served, raw: bytes) -> bytes | None:
    """Send ``raw``; return the first final answer (headers and body), ``b""`` when the
    server closed without one, ``None`` when it waits for more input.

    The write side is never half-closed: aiohttp treats that as the client going away and
    drops the answer.
    """
    host, port = served.host_port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()  # may fail: the server answered and closed early (400)
        buffer = b""
        while True:
            # Headers of an answer (skipping interim "100 Continue" answers).
            while b"\r\n\r\n" not in buffer:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), QUIET)
                except TimeoutError:
                    return buffer if buffer else None
                except ConnectionError:
                    chunk = b""
                if not chunk:
                    return buffer
                buffer += chunk
            head, _, rest = buffer.partition(b"\r\n\r\n")
            if STATUS_LINE.match(head) and head.split(b" ", 2)[1] == b"100":
                buffer = rest
                continue
            break
        length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        wanted = int(length.group(1)) if length else None
        if raw.startswith(b"HEAD ") or head.split(b" ", 2)[1:2] in ([b"204"], [b"304"]):
            wanted = 0  # no body, whatever the headers say
        while wanted is None or len(rest) < wanted:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), QUIET)
            except (TimeoutError, ConnectionError):
                break
            if not chunk:
                break
            rest += chunk
        return head + b"\r\n\r\n" + rest
    finally:
        writer.transport.abort()


def check_answer(served: Served, answer: bytes | None) -> None:
    counts = served.counts
    if answer is None:
        counts["waits for more input"] += 1
        return
    if not answer:
        counts["closed without an answer"] += 1
        return
    match = STATUS_LINE.match(answer)
    assert match is not None, f"not an HTTP answer: {answer[:200]!r}"
    status = int(match.group(1))
    head, _, body = answer.partition(b"\r\n\r\n")
    # "api": answered by peer-ring's handlers (JSON); "http": by aiohttp's parser or router.
    origin = "api" if b"application/json" in head.lower() else "http"
    counts[f"status {status} ({origin})"] += 1
    assert status != 500, f"internal error: {answer[:600]!r}"
    assert 100 <= status < 600
    if status >= 400 and b"application/json" in head.lower() and body.strip():  # HEAD: no body
        # Our own errors: JSON with a message. (aiohttp's parser errors are text/plain.)
        document = json.loads(body[: body.rfind(b"}") + 1] or b"{}")
        assert isinstance(document.get("error"), str) and document["error"], body[:300]


def run_case(runner: asyncio.Runner, served: Served, raw: bytes) -> None:
    answer = runner.run(asyncio.wait_for(send(served, raw), CASE_LIMIT))
    check_answer(served, answer)
    served.counts["cases"] += 1


SETTINGS = settings(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the tests ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_warm_up_then_measure_memory(runner: asyncio.Runner, served: Served) -> None:
    @settings(SETTINGS, max_examples=100)
    @given(requests())
    def warm(raw: bytes) -> None:
        run_case(runner, served, raw)

    warm()
    served.counts["rss before"] = served.rss()


@pytest.mark.slow
def test_fuzzed_http_requests(runner: asyncio.Runner, served: Served) -> None:
    @settings(SETTINGS, max_examples=2000 * SCALE)
    @given(requests())
    def case(raw: bytes) -> None:
        run_case(runner, served, raw)

    case()


@pytest.mark.slow
def test_the_node_survived_with_bounded_memory_and_still_serves(
    runner: asyncio.Runner, served: Served
) -> None:
    node = served.cluster.nodes[0]
    assert node.running, f"the node died:\n{node.log_tail()}"
    growth = served.rss() - served.counts["rss before"]
    summary = {k: v for k, v in sorted(served.counts.items()) if not k.startswith("rss")}
    print(f"\nHTTP fuzz: {summary}; RSS growth {growth / 2**20:.1f} MiB")
    assert served.counts["cases"] >= 2000 * SCALE
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.1f} MiB"
    log = node.log_path.read_text(errors="replace")
    for sign in (
        "Task exception was never retrieved",
        "Exception in callback",
        "failed unexpectedly",
    ):
        assert sign not in log, f"{sign!r} in {node.log_path}"

    async def normal() -> tuple[int, bytes, str]:
        base = served.address.url
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.put(f"{base}/kv/after%20fuzz", data=b"value", headers=auth) as r:
                assert r.status == 204, await r.text()
            async with session.get(f"{base}/kv/after%20fuzz", headers=auth) as r:
                status, body = r.status, await r.read()
            async with session.get(f"{base}/metrics", headers=auth) as r:
                metrics = await r.text()
        return status, body, metrics

    status, body, metrics = runner.run(normal())
    assert (status, body) == (200, b"value")
    # Every 401 the fuzz saw was counted by reason.
    refused = sum(
        float(m.group(1))
        for m in re.finditer(
            r'^peer_ring_kv_http_auth_failures_total\{reason="\w+"\} (\S+)$', metrics, re.M
        )
    )
    assert refused >= served.counts["status 401 (api)"] > 0


# -- bearer token and binding (in-process and unit) ----------------------------------------------


@pytest_asyncio.fixture
async def token_api() -> AsyncIterator[tuple[KVHttpApi, str]]:
    network = MemoryNetwork()
    store = KVStore(
        FixedDiscovery("127.0.0.1:7101", ["127.0.0.1:7101"]),
        replication=1,
        config=PeerRingConfig(partitions=8),
        transport=network.transport("127.0.0.1:7101"),
    )
    await store.start()
    api = KVHttpApi(store, http_token=TOKEN)
    api.set_ready(True)
    server = KVHttpServer(api, "127.0.0.1", 0)
    await server.start()
    try:
        yield api, server.url
    finally:
        await server.stop()
        await store.stop()


async def test_every_401_is_counted_by_reason_and_logs_are_thinned(
    token_api: tuple[KVHttpApi, str], caplog: pytest.LogCaptureFixture
) -> None:
    api, url = token_api
    tries = {
        "missing": [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}],
        "invalid": [{"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer é"}],
    }
    async with aiohttp.ClientSession() as session:
        with caplog.at_level("WARNING", logger="peer_ring.kv._server"):
            for _ in range(10):
                for headers in tries["missing"] + tries["invalid"]:
                    async with session.get(f"{url}/kv/k", headers=headers) as r:
                        assert r.status == 401
                        assert (await r.json())["error"]
            # Raw non-UTF-8 bytes in the header: a 401, not a 500.
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /kv/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n")
            status_line = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            assert status_line.startswith(b"HTTP/1.1 401"), status_line
        async with session.get(f"{url}/kv/k", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 404
    failures = api.metrics.http_auth_failures
    assert failures.labels("missing")._value.get() == 30
    assert failures.labels("invalid")._value.get() == 21
    rendered = api.metrics.render().decode()
    assert 'peer_ring_kv_http_auth_failures_total{reason="invalid"} 21.0' in rendered
    lines = [r for r in caplog.records if "bearer token" in r.getMessage()]
    assert 1 <= len(lines) <= 4  # one per reason (per 10 s), not one per request


async def test_token_is_compared_in_constant_time(
    token_api: tuple[KVHttpApi, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmac

    _, url = token_api
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    headers = {"Authorization": "Bearer guess"}
    async with aiohttp.ClientSession() as session, session.get(f"{url}/kv/k", headers=headers) as r:
        assert r.status == 401
    assert compared == [(b"guess", TOKEN.encode())]


def test_http_api_binds_loopback_unless_told_otherwise() -> None:
    def config(argv: list[str]) -> Any:
        import argparse

        from peer_ring.kv._serve_config import add_serve_arguments

        parser = argparse.ArgumentParser()
        add_serve_arguments(parser)
        return config_from(parser.parse_args(argv), {})

    # A pod's peer address is not loopback: the HTTP API still binds 127.0.0.1 ...
    cfg = config(["--listen=10.1.2.3:7101"])
    assert http_address(cfg, "10.1.2.3:7101") == ("127.0.0.1", 8101)
    # ... unless --http says otherwise, explicitly.
    cfg = config(["--listen=10.1.2.3:7101", "--http=0.0.0.0:8101"])
    assert http_address(cfg, "10.1.2.3:7101") == ("0.0.0.0", 8101)
    with pytest.raises(UsageError):
        config(["--listen=10.1.2.3:7101", "--http=nowhere"])


async def test_serve_http_listens_on_its_loopback_address_only(tmp_path: Any) -> None:
    """Without --http, serve binds its API to the peer's loopback address, nothing wider."""
    address = allocate_addresses(1, hosts=("127.0.0.5",))[0]
    http_port = int(address.http.rpartition(":")[2])
    log = (tmp_path / "serve.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "peer_ring.kv.cli",
        "serve",
        f"--listen={address.peer}",
        f"--http-port={http_port}",
        "--replication=1",
        "--partitions=8",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("PEER_RING_")},
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            deadline = time.monotonic() + 60
            while True:  # poll /healthz, bounded by the deadline
                assert process.returncode is None, (tmp_path / "serve.log").read_text()
                try:
                    async with session.get(f"http://127.0.0.5:{http_port}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "serve did not answer on 127.0.0.5"
                await asyncio.sleep(0.05)
            # Not on other addresses of the host: the socket is bound to 127.0.0.5 only.
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(f"http://127.0.0.1:{http_port}/healthz"):
                    pass
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 20)
        log.close()
