"""The ASGI middleware and the rate-limit headers (no web framework needed)."""

from __future__ import annotations

import time
from collections.abc import Callable

from peer_ring.ratelimit import Limit, RateLimiter
from peer_ring.ratelimit.asgi import RateLimitMiddleware, rate_limit_headers

LIMIT = Limit(3, 60.0, algorithm="fixed_window")


async def hello(scope: dict[str, object], receive: object, send: Callable[..., object]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})  # type: ignore[misc]
    await send({"type": "http.response.body", "body": b"hello"})  # type: ignore[misc]


async def test_middleware_sets_headers_and_answers_429(
    cluster: list[RateLimiter], asgi_get: Callable[..., object]
) -> None:
    apps = [RateLimitMiddleware(hello, rl, LIMIT) for rl in cluster]  # type: ignore[arg-type]
    results = [await asgi_get(apps[i % 5], "/") for i in range(5)]  # type: ignore[misc]
    assert [r[0] for r in results] == [200, 200, 200, 429, 429]
    status, headers, body = results[0]
    assert body == b"hello" and headers["x-app"] == "1"
    assert headers["ratelimit-limit"] == "3" and headers["ratelimit-remaining"] == "2"
    assert headers["ratelimit-policy"] == "3;w=60" and 59 <= int(headers["ratelimit-reset"]) <= 60
    assert headers["x-ratelimit-remaining"] == "2"
    assert abs(int(headers["x-ratelimit-reset"]) - (time.time() + 60)) <= 2
    status, headers, body = results[3]
    assert status == 429
    assert headers["retry-after"] == headers["ratelimit-reset"] and b"rate limit" in body
    assert "retry-after" not in results[0][1]
    # Another client has its own quota.
    assert (await asgi_get(apps[0], "/", client=("10.9.9.9", 1)))[0] == 200  # type: ignore[misc]


def test_headers_of_a_cost_that_never_fits() -> None:
    from peer_ring.ratelimit import decide

    _, d = decide(None, LIMIT, 5, 0.0)
    assert rate_limit_headers(d, LIMIT)["Retry-After"] == "60"
