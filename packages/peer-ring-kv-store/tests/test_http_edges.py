"""HTTP API edges: the Expect header, batch body limits, admin arguments, drain, and the
error mapping of the core errors not covered by test_error_paths_http.py.

One in-memory store behind the real aiohttp server. Errors no HTTP route produces on its
own (a message over the transport's size limit, an unclassified core error) are injected
into ``KVStore.get``, as in test_error_paths_http.py.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from peer_ring.core import MessageTooLargeError, NotRunningError, PeerRingConfig, PeerRingError
from peer_ring.kv import KVStore
from peer_ring.kv._batch_http import MAX_BATCH_KEYS
from peer_ring.kv._server import KVHttpApi, KVHttpServer

PEERS = ["127.0.0.1:7101"]
MAX_VALUE = 1024
#: The batch routes' body limit for MAX_VALUE (see _batch_http.install_batch_routes).
BATCH_LIMIT = 16 * MAX_VALUE + (1 << 20)


@pytest.fixture
async def store(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> KVStore:
    (s,) = await start_stores(
        PEERS,
        config=PeerRingConfig(partitions=64, request_timeout=1.0),
        ready=False,
        graceful=True,
        replication=1,
    )
    return s


@pytest.fixture
async def api(store: KVStore) -> KVHttpApi:
    api = KVHttpApi(store, max_value_bytes=MAX_VALUE, replication=1)
    api.set_ready(True)
    return api


@pytest.fixture
async def http(
    api: KVHttpApi,
    serve_http: Callable[[KVHttpApi], Awaitable[tuple[str, aiohttp.ClientSession]]],
) -> tuple[str, aiohttp.ClientSession]:
    return await serve_http(api)


async def test_the_url_of_a_server_not_started_is_an_error(api: KVHttpApi) -> None:
    server = KVHttpServer(api, "127.0.0.1", 0)
    with pytest.raises(NotRunningError, match="the HTTP server is not started"):
        _ = server.url


async def test_an_unknown_expect_header_is_417_and_nothing_is_written(
    store: KVStore, http: tuple[str, aiohttp.ClientSession]
) -> None:
    url, session = http
    async with session.put(f"{url}/kv/k", data=b"v", headers={"Expect": "200-ok"}) as r:
        assert r.status == 417  # answered before the handler runs: plain text, not JSON
        assert await r.text() == "unknown Expect: 200-ok"
    assert await store.get("k") is None
    async with session.put(f"{url}/kv/k", data=b"v", expect100=True) as r:
        assert r.status == 204
    assert await store.get("k") == b"v"


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (MessageTooLargeError("response of 5000000 bytes"), 413, "response of 5000000 bytes"),
        (PeerRingError("something odd"), 500, "PeerRingError: something odd"),
    ],
    ids=["message-too-large", "other-core-error"],
)
async def test_core_errors_map_to_their_status_and_the_api_keeps_serving(
    store: KVStore,
    http: tuple[str, aiohttp.ClientSession],
    error: Exception,
    status: int,
    message: str,
) -> None:
    url, session = http
    real_get = store.get

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise error

    store.get = failing  # type: ignore[method-assign]
    async with session.get(f"{url}/kv/a") as r:
        assert r.status == status
        assert (await r.json()) == {"error": message}
    store.get = real_get  # type: ignore[method-assign]
    async with session.put(f"{url}/kv/a", data=b"1") as r:
        assert r.status == 204
    async with session.get(f"{url}/kv/a") as r:
        assert (r.status, await r.read()) == (200, b"1")


async def test_a_quorum_above_the_default_replication_is_400(
    http: tuple[str, aiohttp.ClientSession],
) -> None:
    url, session = http
    async with session.get(f"{url}/kv/a", params={"quorum": "2"}) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "quorum (2) cannot be greater than replication (1)"


# ---------------------------------------------------------------------------------- batches
async def test_a_batch_body_over_the_limit_is_413_declared_or_streamed(
    http: tuple[str, aiohttp.ClientSession],
) -> None:
    url, session = http
    big = b'{"keys": [' + b" " * BATCH_LIMIT + b"]}"
    async with session.post(f"{url}/batch/mget", data=io.BytesIO(big)) as r:  # Content-Length
        assert r.status == 413
        doc = await r.json()
        assert (doc["size"], doc["limit"]) == (len(big), BATCH_LIMIT)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    async with session.post(f"{url}/batch/mget", data=chunks()) as r:  # chunked: read + 1
        assert r.status == 413
        doc = await r.json()
        assert (doc["size"], doc["limit"]) == (BATCH_LIMIT + 1, BATCH_LIMIT)


async def test_batches_of_more_than_max_keys_are_400(
    store: KVStore, http: tuple[str, aiohttp.ClientSession]
) -> None:
    url, session = http
    keys = [f"k{i}" for i in range(MAX_BATCH_KEYS + 1)]
    for route in ("mget", "mdelete"):
        async with session.post(f"{url}/batch/{route}", json={"keys": keys}) as r:
            assert r.status == 400
            assert (await r.json())["error"] == f"at most {MAX_BATCH_KEYS} keys per request"
    items = dict.fromkeys(keys, "dg==")
    async with session.post(f"{url}/batch/mset", json={"items": items}) as r:
        assert r.status == 400
        assert (await r.json())["error"] == f"at most {MAX_BATCH_KEYS} keys per request"
    assert await store.get("k0") is None  # nothing written
    # At the limit: accepted.
    async with session.post(f"{url}/batch/mget", json={"keys": keys[:MAX_BATCH_KEYS]}) as r:
        assert r.status == 200
        assert (await r.json()) == {"values": {}}


# ------------------------------------------------------------------------------------ admin
@pytest.mark.parametrize("text", ["0", "-2", "three"])
async def test_admin_routes_refuse_a_bad_replication(
    http: tuple[str, aiohttp.ClientSession], text: str
) -> None:
    url, session = http
    for path in ("/admin/ring", "/admin/key/a"):
        async with session.get(f"{url}{path}", params={"replication": text}) as r:
            assert r.status == 400
            assert (await r.json()) == {"error": f"replication must be an int >= 1, got {text!r}"}


async def test_drain_without_a_serve_process_is_501(
    http: tuple[str, aiohttp.ClientSession],
) -> None:
    url, session = http
    async with session.post(f"{url}/admin/drain") as r:
        assert r.status == 501
        assert "drain is not available here" in (await r.json())["error"]


async def test_a_second_drain_request_does_not_drain_twice(
    api: KVHttpApi, http: tuple[str, aiohttp.ClientSession]
) -> None:
    url, session = http
    calls: list[int] = []
    api.drain_handler = lambda: calls.append(1)
    for _ in range(2):
        async with session.post(f"{url}/admin/drain") as r:
            assert r.status == 202
            assert json.loads(await r.text()) == {"draining": True, "self": PEERS[0]}
    assert calls == [1]


async def test_a_chunked_batch_body_is_read_whole(
    store: KVStore, http: tuple[str, aiohttp.ClientSession]
) -> None:
    # A body sent in chunks (Transfer-Encoding: chunked, no Content-Length) arrives in
    # pieces: it used to be cut at the first piece and refused as "not a JSON object".
    url, session = http
    await store.set("key-8999", b"last")
    body = json.dumps({"keys": [f"key-{i}" for i in range(9000)]}).encode()  # ~100 KiB

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 16384):
            yield body[i : i + 16384]
            # A slow client: the server's handler runs before the rest has arrived (not a
            # synchronisation; without the pause the whole body may be buffered already).
            await asyncio.sleep(0.01)

    async with session.post(f"{url}/batch/mget", data=chunks()) as r:
        assert r.status == 200, await r.text()
        assert (await r.json()) == {"values": {"key-8999": {"b64": "bGFzdA=="}}}
