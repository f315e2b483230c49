"""Error path of the HTTP API: a peer failure that is not a quorum failure answers 502.

No store operation routed by the HTTP API raises ``PeerUnavailableError`` or
``RemoteError`` on its own today (quorum reads and writes raise
``QuorumNotReachedError``, 503), so the failure is injected into the store's ``get`` and
``set``; the request goes through the real aiohttp server and the real error mapping.
The store's ``ValueTooLargeError`` (a value under the API's limit but over the store's)
answers 413 with its size and limit; the 413 of the API's own limit and the 400s are
driven in ``test_http_api.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from peer_ring.core import PeerRingConfig, PeerUnavailableError, RemoteError
from peer_ring.kv import KVStore
from peer_ring.kv._server import KVHttpApi

PEERS = ["127.0.0.1:7101"]
CONFIG = PeerRingConfig(partitions=64, request_timeout=1.0)
#: The store's own value limit, below the HTTP API's (1024): a value between the two passes
#: the HTTP check and is refused by the store with ValueTooLargeError.
STORE_MAX = 64


@pytest.fixture
async def store(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> KVStore:
    (s,) = await start_stores(
        PEERS, config=CONFIG, ready=False, graceful=True, replication=1, max_value_bytes=STORE_MAX
    )
    return s


@pytest.fixture
async def http(
    store: KVStore,
    serve_http: Callable[[KVHttpApi], Awaitable[tuple[str, aiohttp.ClientSession]]],
) -> tuple[str, aiohttp.ClientSession]:
    api = KVHttpApi(store, max_value_bytes=1024)
    api.set_ready(True)
    return await serve_http(api)


@pytest.mark.parametrize(
    "error",
    [
        PeerUnavailableError("127.0.0.9:1", "connection refused"),
        RemoteError("127.0.0.9:1: handler failed"),
    ],
    ids=["unavailable", "remote"],
)
async def test_a_peer_failure_answers_502_and_the_api_keeps_serving(
    store: KVStore, http: tuple[str, aiohttp.ClientSession], error: Exception
) -> None:
    url, session = http
    async with session.put(f"{url}/kv/ok", data=b"1") as r:
        assert r.status in (200, 201, 204)
    real_get = store.get

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise error

    store.get = failing  # type: ignore[method-assign]
    async with session.get(f"{url}/kv/ok") as r:
        assert r.status == 502
        body = await r.json()
        assert str(error) in str(body)
    store.get = real_get  # type: ignore[method-assign]
    async with session.get(f"{url}/kv/ok") as r:
        assert r.status == 200 and await r.read() == b"1"


async def test_a_value_the_store_refuses_as_too_large_answers_413_with_size_and_limit(
    store: KVStore, http: tuple[str, aiohttp.ClientSession]
) -> None:
    url, session = http
    async with session.put(f"{url}/kv/big", data=b"x" * 100) as r:
        assert r.status == 413
        body = await r.json()
        assert body.get("size") == 100 and body.get("limit") == STORE_MAX, body
    assert await store.get("big") is None  # nothing stored
    async with session.put(f"{url}/kv/small", data=b"x" * 10) as r:
        assert r.status in (200, 201, 204)
