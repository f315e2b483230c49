"""ASGI middleware and rate-limit response headers (no web framework needed).

Headers set on every limited response:

- IETF draft (draft-ietf-httpapi-ratelimit-headers, the widely deployed ``-07`` field set):
  ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` (seconds from now until
  the quota is fully back) and ``RateLimit-Policy`` (``"100;w=60"``);
- the de-facto ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``X-RateLimit-Reset``
  (Unix time in seconds, as GitHub and others send it);
- ``Retry-After`` (seconds) on a denied request, answered ``429 Too Many Requests``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from peer_ring.ratelimit._decision import Decision
from peer_ring.ratelimit._limit import Limit
from peer_ring.ratelimit._limiter import RateLimiter
from peer_ring.ratelimit._policy import Mode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Returns the key of a request (None: not limited), e.g. the client IP or an API key.
KeyFunc = Callable[[Scope], "str | None"]


def rate_limit_headers(decision: Decision, limit: Limit) -> dict[str, str]:
    """The response headers describing ``decision`` (see the module docstring)."""
    reset = max(0, math.ceil(decision.reset_after))
    headers = {
        "RateLimit-Limit": str(limit.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(reset),
        "RateLimit-Policy": f"{limit.limit};w={limit.period:g}",
        "X-RateLimit-Limit": str(limit.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(math.ceil(time.time()) + reset),
    }
    if not decision.allowed:
        retry = decision.retry_after_seconds
        # A cost that can never fit: tell the client to come back after a full period.
        headers["Retry-After"] = str(retry if retry is not None else math.ceil(limit.period))
    return headers


def client_ip(scope: Scope) -> str | None:
    """The default key: the client's IP address (None when unknown)."""
    client = scope.get("client")
    return None if not client else f"ip:{client[0]}"


class RateLimitMiddleware:
    """Limit every HTTP request of an ASGI app (FastAPI, Starlette, Quart...).

    Args:
        app: the wrapped ASGI application.
        limiter: a started :class:`RateLimiter`.
        limit: the limit applied to each key.
        key: ``key(scope) -> str | None``; None lets the request through unlimited
            (default: the client IP).
        cost: hits per request.
        mode: the limiter's mode for these hits (default: the limiter's).
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        limit: Limit,
        *,
        key: KeyFunc = client_ip,
        cost: int = 1,
        mode: Mode | str | None = None,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.limit = limit
        self.key = key
        self.cost = cost
        self.mode = mode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        k = self.key(scope)
        if k is None:
            await self.app(scope, receive, send)
            return
        d = await self.limiter.hit(k, self.limit, self.cost, mode=self.mode)
        extra = [
            (n.lower().encode(), v.encode()) for n, v in rate_limit_headers(d, self.limit).items()
        ]
        if not d.allowed:
            body = json.dumps({"detail": "rate limit exceeded"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
