"""The HTTP API in-process: a real aiohttp server over KVStores on the in-memory network.

Three stores share a :class:`MemoryNetwork` and a :class:`FakeClock`; node A's HTTP API is
served on a free port of 127.0.0.1 and driven with a real aiohttp client. Time only moves
when a test advances the clock, so TTL expiry is checked without sleeping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from yarl import URL

from peer_ring.core import (
    OverloadedError,
    PeerRing,
    PeerRingConfig,
    RequestTimeoutError,
)
from peer_ring.core.testing import FakeClock, settle_loop
from peer_ring.kv import KVStore
from peer_ring.kv._server import KVHttpApi

PEERS = ["127.0.0.1:7101", "127.0.0.2:7101", "127.0.0.3:7101"]
CONFIG = PeerRingConfig(partitions=64, request_timeout=1.0)
MAX_VALUE = 1024
TOKEN = "s3cret-token"


@pytest.fixture
async def stores(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> list[KVStore]:
    # Started, not waited for: the API must answer while the nodes join.
    return await start_stores(
        PEERS, config=CONFIG, ready=False, graceful=True, replication=3, max_value_bytes=MAX_VALUE
    )


@pytest.fixture
async def api(stores: list[KVStore]) -> KVHttpApi:
    # The tests of the data API write and read at once: they wait until every node pulled
    # its partitions (a replica still pulling refuses writes, and the API answers 503).
    # They used to start while the nodes were still joining and won the race only while a
    # pull round took fewer loop turns than the first HTTP request (lost with 5d12eac's 8
    # turns between sync slices, which fe3a62f later kept out of the initial pull).
    # test_probes_follow_readiness still covers the API answering while the nodes join.
    await asyncio.gather(*(s.wait_ready(30.0) for s in stores))
    await settle_loop()
    api = KVHttpApi(stores[0], max_value_bytes=MAX_VALUE)
    api.set_ready(True)
    return api


@pytest.fixture
async def http(
    api: KVHttpApi,
    serve_http: Callable[[KVHttpApi], Awaitable[tuple[str, aiohttp.ClientSession]]],
) -> tuple[str, aiohttp.ClientSession]:
    return await serve_http(api)


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.content_type == "application/json", await response.text()
    body = await response.json()
    assert isinstance(body, dict)
    return body


# -- /kv --------------------------------------------------------------------------------------


async def test_put_get_delete_round_trip(http: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = http
    value = bytes(range(256))  # every byte value: the API must not touch the body
    async with session.put(f"{url}/kv/user:1", data=value) as r:
        assert r.status == 204
    async with session.get(f"{url}/kv/user:1") as r:
        assert r.status == 200
        assert r.content_type == "application/octet-stream"
        assert await r.read() == value
    async with session.delete(f"{url}/kv/user:1") as r:
        assert r.status == 204
    async with session.get(f"{url}/kv/user:1") as r:
        assert r.status == 404
        body = await _json(r)
        assert body["key"] == "user:1"
        assert "not found" in body["error"]


async def test_value_written_over_http_is_readable_from_python_on_another_node(
    http: tuple[str, aiohttp.ClientSession], stores: list[KVStore]
) -> None:
    url, session = http
    async with session.put(f"{url}/kv/shared", data=b"from-http", params={"quorum": 3}) as r:
        assert r.status == 204
    assert await stores[2].get("shared", quorum=2) == b"from-http"


async def test_empty_value_is_stored_not_absent(http: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = http
    async with session.put(f"{url}/kv/empty", data=b"") as r:
        assert r.status == 204
    async with session.get(f"{url}/kv/empty") as r:
        assert r.status == 200
        assert await r.read() == b""


@pytest.mark.parametrize(
    ("raw_path", "key"),
    [
        ("/kv/a%2Fb", "a/b"),
        ("/kv/a/b", "a/b"),  # a raw slash and %2F name the same key
        ("/kv/%C3%A9t%C3%A9", "été"),
        ("/kv/with%20space", "with space"),
        ("/kv/%25", "%"),
    ],
)
async def test_keys_are_percent_decoded_utf8(
    http: tuple[str, aiohttp.ClientSession], stores: list[KVStore], raw_path: str, key: str
) -> None:
    url, session = http
    async with session.put(URL(f"{url}{raw_path}", encoded=True), data=b"v") as r:
        assert r.status == 204
    assert await stores[1].get(key, quorum=2) == b"v"


@pytest.mark.parametrize("raw_path", ["/kv/", "/kv", "/kv/%FF", "/kv/%C3"])
async def test_empty_or_invalid_keys_are_rejected(
    http: tuple[str, aiohttp.ClientSession], raw_path: str
) -> None:
    url, session = http
    async with session.put(URL(f"{url}{raw_path}", encoded=True), data=b"v") as r:
        assert r.status == 400
        body = await _json(r)
        assert "key" in body["error"]


async def test_ttl_expires_the_value(
    http: tuple[str, aiohttp.ClientSession], clock: FakeClock
) -> None:
    url, session = http
    async with session.put(f"{url}/kv/session", data=b"tok", params={"ttl": "30"}) as r:
        assert r.status == 204
    async with session.get(f"{url}/kv/session") as r:
        assert r.status == 200
    clock.advance(31)
    async with session.get(f"{url}/kv/session") as r:
        assert r.status == 404


@pytest.mark.parametrize(
    ("method", "params", "fragment"),
    [
        ("PUT", {"ttl": "abc"}, "ttl"),
        ("PUT", {"ttl": "0"}, "ttl"),
        ("PUT", {"ttl": "-5"}, "ttl"),
        ("PUT", {"ttl": "inf"}, "ttl"),
        ("PUT", {"ttl": "nan"}, "ttl"),
        ("PUT", {"quorum": "two"}, "quorum"),
        ("GET", {"quorum": "0"}, "quorum"),
        ("GET", {"replication": "-1"}, "replication"),
        ("GET", {"quorum": "4"}, "quorum (4) cannot be greater than replication (3)"),
        ("PUT", {"replication": "2", "quorum": "3"}, "cannot be greater than replication (2)"),
        ("DELETE", {"quorum": "9"}, "cannot be greater"),
        ("GET", {"ttl": "5"}, "unknown query parameter"),
        ("PUT", {"qourum": "1"}, "unknown query parameter(s) qourum"),
    ],
)
async def test_bad_query_parameters_are_400(
    http: tuple[str, aiohttp.ClientSession],
    method: str,
    params: Mapping[str, str],
    fragment: str,
) -> None:
    url, session = http
    async with session.request(method, f"{url}/kv/k", params=params, data=b"v") as r:
        assert r.status == 400
        body = await _json(r)
        assert fragment in body["error"]


async def test_per_call_replication_and_quorum_are_used(
    http: tuple[str, aiohttp.ClientSession], stores: list[KVStore]
) -> None:
    url, session = http
    async with session.put(
        f"{url}/kv/single", data=b"one", params={"replication": "1", "quorum": "1"}
    ) as r:
        assert r.status == 204
    owner = stores[0].node.preference_list("single", 1)[0]
    holders = [s for s in stores if s.engine.get(b"single") is not None]
    assert [s.node.address for s in holders] == [owner]


async def test_oversized_value_is_413_from_content_length(
    http: tuple[str, aiohttp.ClientSession], stores: list[KVStore]
) -> None:
    url, session = http
    async with session.put(f"{url}/kv/big", data=b"x" * (MAX_VALUE + 1)) as r:
        assert r.status == 413
        body = await _json(r)
        assert body["limit"] == MAX_VALUE
        assert body["size"] == MAX_VALUE + 1
    assert await stores[0].get("big", quorum=1) is None
    # The limit itself is accepted.
    async with session.put(f"{url}/kv/big", data=b"x" * MAX_VALUE) as r:
        assert r.status == 204


async def test_expect_100_continue(
    http: tuple[str, aiohttp.ClientSession], stores: list[KVStore]
) -> None:
    url, session = http
    # Refused before the upload: the final status answers the Expect header.
    async with session.put(f"{url}/kv/big", data=b"x" * (MAX_VALUE + 1), expect100=True) as r:
        assert r.status == 413
        assert (await _json(r))["limit"] == MAX_VALUE
    # Accepted: 100 Continue, then the body, then 204.
    async with session.put(f"{url}/kv/ok", data=b"y" * MAX_VALUE, expect100=True) as r:
        assert r.status == 204
    assert await stores[1].get("ok", quorum=2) == b"y" * MAX_VALUE


async def test_oversized_chunked_value_is_413(http: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = http

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * (MAX_VALUE // 2)

    # An async generator body is sent chunked: no Content-Length to check up front.
    async with session.put(f"{url}/kv/big", data=chunks()) as r:
        assert r.status == 413
        body = await _json(r)
        assert body["limit"] == MAX_VALUE
        assert "exceeds" in body["error"]


async def test_quorum_unreachable_is_503_naming_the_replica(
    http: tuple[str, aiohttp.ClientSession], stores: list[KVStore]
) -> None:
    url, session = http
    async with session.put(f"{url}/kv/k", data=b"v", params={"quorum": "3"}) as r:
        assert r.status == 204
    dead = stores[2]
    await dead.abort()  # its transport refuses from now on, like a killed process
    async with session.get(f"{url}/kv/k", params={"quorum": "3"}) as r:
        assert r.status == 503
        body = await _json(r)
        assert body["unreachable"] == [dead.node.address]
        assert body["quorum"] == 3
        # The coordinator may fail fast, before every live replica has answered.
        assert set(body["succeeded"]) <= {s.node.address for s in stores[:2]}
        assert dead.node.address in body["error"]
        assert dead.node.address in body["failures"]
    async with session.get(f"{url}/kv/k", params={"quorum": "2"}) as r:
        assert r.status == 200
        assert await r.read() == b"v"
    async with session.put(f"{url}/kv/k2", data=b"v", params={"quorum": "3"}) as r:
        assert r.status == 503
        assert (await _json(r))["unreachable"] == [dead.node.address]


async def test_non_bytes_values_have_a_text_form(
    http: tuple[str, aiohttp.ClientSession], stores: list[KVStore]
) -> None:
    url, session = http
    await stores[1].set("text", "héllo")
    await stores[1].set("doc", {"a": [1, 2]})
    async with session.get(f"{url}/kv/text") as r:
        assert r.status == 200
        assert r.content_type == "text/plain"
        assert await r.text() == "héllo"
    async with session.get(f"{url}/kv/doc") as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        assert json.loads(await r.text()) == {"a": [1, 2]}


# -- routing and errors ------------------------------------------------------------------------


async def test_unknown_route_is_json_404(http: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = http
    async with session.get(f"{url}/nope") as r:
        assert r.status == 404
        assert "/nope" in (await _json(r))["error"]


async def test_wrong_method_is_json_405(http: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = http
    async with session.post(f"{url}/kv/k", data=b"v") as r:
        assert r.status == 405
        body = await _json(r)
        assert body["allowed"] == ["DELETE", "GET", "PUT"]
        assert r.headers["Allow"] == "DELETE, GET, PUT"
    async with session.delete(f"{url}/cluster") as r:
        assert r.status == 405


class _FailingStore:
    """A backend whose operations raise a chosen error (to check the status mapping)."""

    def __init__(self, node: PeerRing, error: Exception) -> None:
        self.node = node
        self._error = error

    async def get(self, key: str, default: Any = None, **kw: Any) -> Any:
        raise self._error

    async def set(self, key: str, value: Any, **kw: Any) -> None:
        raise self._error

    async def delete(self, key: str, **kw: Any) -> None:
        raise self._error

    def stats(self) -> dict[str, int | float]:
        return {}


@pytest.mark.parametrize(
    ("error", "status", "fragment"),
    [
        (RequestTimeoutError("kv/get timed out after 1s"), 504, "timed out"),
        (OverloadedError("too many queued"), 503, "overloaded"),
        (RuntimeError("boom"), 500, "internal error: RuntimeError"),
    ],
)
async def test_store_errors_map_to_status_codes(
    stores: list[KVStore],
    error: Exception,
    status: int,
    fragment: str,
    serve_http: Callable[[KVHttpApi], Awaitable[tuple[str, aiohttp.ClientSession]]],
) -> None:
    api = KVHttpApi(_FailingStore(stores[0].node, error), max_value_bytes=MAX_VALUE)
    api.set_ready(True)
    url, session = await serve_http(api)
    for method in ("GET", "PUT", "DELETE"):
        async with session.request(method, f"{url}/kv/k", data=b"v") as r:
            assert r.status == status
            assert fragment in (await _json(r))["error"]
    if status == 503:
        assert r.headers["Retry-After"] == "1"


# -- probes, cluster, metrics -----------------------------------------------------------------


async def test_probes_follow_readiness(
    stores: list[KVStore],
    serve_http: Callable[[KVHttpApi], Awaitable[tuple[str, aiohttp.ClientSession]]],
) -> None:
    api = KVHttpApi(stores[0], max_value_bytes=MAX_VALUE)
    url, session = await serve_http(api)
    async with session.get(f"{url}/healthz") as r:
        assert r.status == 200
    async with session.get(f"{url}/readyz") as r:
        assert r.status == 503  # HTTP is up, the node not declared ready yet
        assert (await _json(r))["ready"] is False
    # Ready also means the node pulled its partitions: wait for that (it may take longer
    # than the request above), then the API's own flag decides.
    await asyncio.gather(*(s.wait_ready(30.0) for s in stores))
    async with session.get(f"{url}/readyz") as r:
        assert r.status == 503  # the node is, the API not declared ready yet
    api.set_ready(True)
    async with session.get(f"{url}/readyz") as r:
        assert r.status == 200
        assert (await _json(r))["self"] == PEERS[0]
    await stores[0].stop()  # a stopped node is not ready, whatever the flag says
    async with session.get(f"{url}/readyz") as r:
        assert r.status == 503
    async with session.get(f"{url}/healthz") as r:
        assert r.status == 200
    async with session.get(f"{url}/kv/k") as r:
        assert r.status == 503
        assert "not ready" in (await _json(r))["error"]


async def test_cluster_document(http: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = http
    async with session.get(f"{url}/cluster") as r:
        assert r.status == 200
        body = await _json(r)
    assert body["self"] == PEERS[0]
    assert body["members"] == sorted(PEERS)
    assert body["suspected"] == []
    assert body["partitions"] == CONFIG.partitions
    assert body["replication"] == 3
    assert body["quorum"] == 2
    assert body["ready"] is True
    # the data-movement state of the node (PeerRing.sync_status, issue 4)
    assert body["handoff"]["partitions"]["pending"] == 0
    assert body["handoff"]["partitions"]["held_for_handoff"] == 0
    assert set(body["owned_partitions"]) == set(PEERS)
    # Every partition has exactly one owner; with N=3 on 3 nodes each holds all of them.
    assert sum(body["owned_partitions"].values()) == CONFIG.partitions
    assert all(n > 0 for n in body["owned_partitions"].values())
    assert body["replica_partitions"] == dict.fromkeys(PEERS, CONFIG.partitions)


async def test_metrics_exposition(http: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = http
    async with session.put(f"{url}/kv/m", data=b"v") as r:
        assert r.status == 204
    async with session.get(f"{url}/kv/absent") as r:
        assert r.status == 404
    async with session.get(f"{url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    for name in (
        'peer_ring_kv_http_requests_total{op="kv_put",status="204"} 1.0',
        'peer_ring_kv_http_requests_total{op="kv_get",status="404"} 1.0',
        'peer_ring_kv_http_request_duration_seconds_count{op="kv_put",status="204"} 1.0',
        "peer_ring_kv_keys 1.0",
        "peer_ring_kv_size_bytes ",
        "peer_ring_kv_evictions_total 0.0",
        "peer_ring_kv_expired_total 0.0",
        "peer_ring_kv_read_repairs_total ",
        "peer_ring_members 3.0",
        "peer_ring_suspected_peers 0.0",
        f"peer_ring_partitions {CONFIG.partitions}.0",
        "peer_ring_owned_partitions ",
        "peer_ring_ready 1.0",
        'peer_ring_kv_info{address="127.0.0.1:7101",version=',
        # the core's metrics, on the same registry
        'peer_ring_node_info{address="127.0.0.1:7101",version=',
        "peer_ring_node_ready 1.0",
        'peer_ring_member_up{peer="127.0.0.2:7101",zone=""} 1.0',
        f"peer_ring_partitions_replicated {CONFIG.partitions}.0",
        "peer_ring_hints_pending 0.0",
        "peer_ring_anti_entropy_rounds_total ",
        "peer_ring_partitions_handed_off_total ",
    ):
        assert name in text, name
    # each family once: the KV no longer exports the ring figures the core collector has
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(families) == len(set(families)), sorted(families)


async def test_two_apis_in_one_process_have_separate_metrics(stores: list[KVStore]) -> None:
    # Each store has its own registry: no "Duplicated timeseries" error, no shared counts.
    first = KVHttpApi(stores[0])
    second = KVHttpApi(stores[1])
    first.metrics.observe("kv_get", 200, 0.001)
    assert b'op="kv_get"' in first.metrics.render()
    assert b'op="kv_get"' not in second.metrics.render()
    assert b'address="127.0.0.2:7101"' in second.metrics.render()


# -- bearer token -----------------------------------------------------------------------------


async def test_bearer_token_is_required_when_configured(
    stores: list[KVStore],
    serve_http: Callable[[KVHttpApi], Awaitable[tuple[str, aiohttp.ClientSession]]],
) -> None:
    api = KVHttpApi(stores[0], http_token=TOKEN, max_value_bytes=MAX_VALUE)
    api.set_ready(True)
    url, session = await serve_http(api)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for path in ("/kv/k", "/cluster", "/metrics"):
            async with session.get(f"{url}{path}", headers=headers) as r:
                assert r.status == 401, (path, headers)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert "token" in (await _json(r))["error"]
    async with session.put(f"{url}/kv/k", data=b"v", expect100=True) as r:
        assert r.status == 401  # refused before the body is sent
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with session.put(f"{url}/kv/k", data=b"v", headers=good) as r:
        assert r.status == 204
    async with session.get(f"{url}/kv/k", headers=good) as r:
        assert await r.read() == b"v"
    # Probes stay open for kubelets and load balancers.
    for path in ("/healthz", "/readyz"):
        async with session.get(f"{url}{path}") as r:
            assert r.status == 200


async def test_replication_larger_than_the_cluster_is_400_not_503(
    http: tuple[str, aiohttp.ClientSession],
) -> None:
    url, session = http
    async with session.put(
        f"{url}/kv/k", data=b"v", params={"replication": "5", "quorum": "4"}
    ) as r:
        assert r.status == 400
        body = await _json(r)
        assert "larger than the cluster" in body["error"]


async def test_batch_routes_mset_mget_mdelete(
    http: tuple[str, aiohttp.ClientSession], stores: list[KVStore]
) -> None:
    import base64

    url, session = http
    items = {f"k{i}": base64.b64encode(bytes([i, 0, 255])).decode() for i in range(10)}
    async with session.post(f"{url}/batch/mset", json={"items": items, "quorum": 2}) as r:
        assert r.status == 204, await r.text()
    await stores[1].set("obj", {"a": 1})
    async with session.post(f"{url}/batch/mget", json={"keys": [*items, "obj", "nope"]}) as r:
        assert r.status == 200
        values = (await _json(r))["values"]
    assert {k: v["b64"] for k, v in values.items() if k != "obj"} == items
    assert values["obj"] == {"json": {"a": 1}}
    async with session.post(f"{url}/batch/mdelete", json={"keys": ["k0", "k1"]}) as r:
        assert r.status == 204
    assert await stores[2].mget(["k0", "k1", "k2"]) == {"k2": bytes([2, 0, 255])}
    for bad in (b"[1]", b"{", b'{"keys": [1]}', b'{"items": {"a": "!!"}}'):
        for route in ("mget", "mset", "mdelete"):
            async with session.post(f"{url}/batch/{route}", data=bad) as r:
                assert r.status == 400, (route, bad, await r.text())
    async with session.post(
        f"{url}/batch/mset", json={"items": {"a": "AA=="}, "replication": 5, "quorum": 4}
    ) as r:
        assert r.status == 400
