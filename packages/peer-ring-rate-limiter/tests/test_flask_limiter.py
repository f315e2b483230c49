"""flask-limiter running unchanged on the ``peerring://`` storage: two instances of a Flask
app, each with its own peer-ring node (real gRPC on loopback), share one limit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

flask = pytest.importorskip("flask", reason="flask is not installed")
flask_limiter = pytest.importorskip("flask_limiter", reason="flask-limiter is not installed")

from flask_limiter import Limiter  # noqa: E402
from flask_limiter.util import get_remote_address  # noqa: E402

import peer_ring.ratelimit.limits_storage  # noqa: E402, F401  (registers peerring://)
from peer_ring.core.testing import free_port  # noqa: E402

HOSTS = ("127.0.0.1", "127.0.0.2")


def make_app(storage_uri: str, strategy: str) -> tuple[Any, Limiter]:
    """The application as a user writes it; only ``storage_uri`` is peer-ring's."""
    app = flask.Flask(__name__)
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=storage_uri,
        strategy=strategy,
        headers_enabled=True,
    )

    @app.get("/fixed")
    @limiter.limit("5/minute")
    def fixed() -> str:
        return "ok"

    @app.get("/concurrent")
    @limiter.limit("4/minute")
    def concurrent() -> str:
        return "ok"

    return app, limiter


@pytest.fixture(scope="module", params=["fixed-window", "moving-window"])
def apps(request: pytest.FixtureRequest) -> Iterator[list[Any]]:
    """Two instances of the app (two nodes of one ring), built concurrently: each storage
    waits until its node joined the other. Once per flask-limiter strategy."""
    port = free_port(*HOSTS)
    peers = ",".join(f"{h}:{port}" for h in HOSTS)
    made: dict[str, tuple[Any, Limiter]] = {}

    def boot(host: str) -> None:
        uri = f"peerring://{host}:{port}?peers={peers}&replication=2"
        made[host] = make_app(uri, request.param)

    threads = [threading.Thread(target=boot, args=(h,)) for h in HOSTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(made) == set(HOSTS), "an app instance failed to start its node"
    yield [made[h][0] for h in HOSTS]
    for _, limiter in made.values():
        limiter._storage.close()  # type: ignore[union-attr]


def test_the_limit_holds_across_two_app_instances(apps: list[Any]) -> None:
    a, b = (app.test_client() for app in apps)
    # Alternate between the instances: each alone would admit 5.
    statuses = [(a if i % 2 == 0 else b).get("/fixed").status_code for i in range(10)]
    assert statuses.count(200) == 5 and statuses[:5] == [200] * 5
    assert statuses[5:] == [429] * 5
    denied = b.get("/fixed")
    assert denied.status_code == 429
    assert denied.headers["X-RateLimit-Limit"] == "5"
    assert denied.headers["X-RateLimit-Remaining"] == "0"
    assert int(denied.headers["Retry-After"]) > 0
    # Another client address has its own allowance, on both instances.
    other = {"REMOTE_ADDR": "10.0.0.9"}
    assert a.get("/fixed", environ_base=other).status_code == 200
    assert b.get("/fixed", environ_base=other).headers["X-RateLimit-Remaining"] == "3"


def test_concurrent_requests_on_both_instances_admit_exactly_the_limit(apps: list[Any]) -> None:
    admitted: list[int] = []
    lock = threading.Lock()
    env = {"REMOTE_ADDR": "10.0.0.77"}

    def run(app: Any) -> None:
        client = app.test_client()
        ok = sum(client.get("/concurrent", environ_base=env).status_code == 200 for _ in range(10))
        with lock:
            admitted.append(ok)

    threads = [threading.Thread(target=run, args=(app,)) for app in apps for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(admitted) == 6 and sum(admitted) == 4
