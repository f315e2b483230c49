"""The HTTP API of ``peer-ring-ratelimit serve``, for clients in any language.

::

    POST /v1/hit     {"key": "api:user:7", "limit": 100, "period": 60, "cost": 1,
                      "algorithm": "token_bucket", "burst": 20, "mode": "owner", "name": "api"}
                     -> 200 {"allowed": true, "limit": 100, "remaining": 99,
                             "reset_after": 0.6, "retry_after": 0.0, "source": "owner"}
                        with the RateLimit-* / X-RateLimit-* (and Retry-After) headers
    POST /v1/hits    {"hits": [{...}, ...]}  -> 200 {"decisions": [{...}, ...]}  (same order)
    POST /v1/reset   {"key": "api:user:7"}   -> 204
    GET  /v1/owner?key=api:user:7            -> {"key", "owner", "replicas"} (this node's view)
    GET  /healthz    200 while the process is up
    GET  /readyz     200 once the node has joined the ring, else 503
    GET  /cluster    this node, its ready flag and the ring members
    GET  /metrics    Prometheus text format

A denial is a 200 answer with ``"allowed": false`` (the decision service worked); bad input
is 400 with ``{"error": ..., "type": ...}``; an unreachable owner under the ``raise`` fail
policy is 503. ``retry_after`` is ``null`` when the cost can never fit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from peer_ring.ratelimit._decision import Decision
from peer_ring.ratelimit._errors import OwnerUnavailableError, RateLimitError
from peer_ring.ratelimit._limit import Algorithm, Limit
from peer_ring.ratelimit._limiter import RateLimiter
from peer_ring.ratelimit._policy import Mode
from peer_ring.ratelimit.asgi import rate_limit_headers

logger = logging.getLogger(__name__)

#: Largest request body accepted (a batch of hits).
MAX_BODY = 1 << 20
#: Most hits in one ``/v1/hits`` request.
MAX_BATCH = 10_000


class BadRequest(Exception):
    """A request the API refuses with 400."""


def decision_json(d: Decision) -> dict[str, Any]:
    """A decision as the JSON object the API returns."""
    return {
        "allowed": d.allowed,
        "limit": d.limit,
        "remaining": d.remaining,
        "reset_after": d.reset_after,
        "retry_after": None if math.isinf(d.retry_after) else d.retry_after,
        "source": d.source,
    }


def parse_hit(obj: object) -> tuple[str, Limit, int, Mode | None]:
    """Validate one hit object; raises :class:`BadRequest` or a typed limiter error."""
    if not isinstance(obj, dict):
        raise BadRequest("a hit is a JSON object")
    key = obj.get("key")
    if not isinstance(key, str) or not key:
        raise BadRequest("key must be a non-empty string")
    for field in ("limit", "period"):
        if field not in obj:
            raise BadRequest(f"missing {field!r}")
    algorithm = obj.get("algorithm", Algorithm.TOKEN_BUCKET.name.lower())
    if not isinstance(algorithm, str):
        raise BadRequest("algorithm must be a string")
    name = obj.get("name")
    if name is not None and not isinstance(name, str):
        raise BadRequest("name must be a string")
    limit = Limit(obj["limit"], obj["period"], obj.get("burst"), Algorithm.parse(algorithm), name)
    cost = obj.get("cost", 1)
    mode = obj.get("mode")
    if mode is not None and mode not in {m.value for m in Mode}:
        raise BadRequest(f"mode must be one of {[m.value for m in Mode]}")
    return key, limit, cost, None if mode is None else Mode(mode)


class RateLimitHttpApi:
    """The aiohttp application around one started :class:`RateLimiter`."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.ready = False

    def make_app(self) -> web.Application:
        """The aiohttp application (routes above)."""
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/hit", self._hit)
        app.router.add_post("/v1/hits", self._hits)
        app.router.add_post("/v1/reset", self._reset)
        app.router.add_get("/v1/owner", self._owner)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/cluster", self._cluster)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _body(self, request: web.Request) -> Any:
        try:
            return await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None

    async def _hit(self, request: web.Request) -> web.StreamResponse:
        try:
            key, limit, cost, mode = parse_hit(await self._body(request))
            d = await self.limiter.hit(key, limit, cost, mode=mode)
        except (BadRequest, RateLimitError) as exc:
            return _error(exc)
        return web.json_response(decision_json(d), headers=rate_limit_headers(d, limit))

    async def _hits(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            hits = body.get("hits") if isinstance(body, dict) else None
            if not isinstance(hits, list) or len(hits) > MAX_BATCH:
                raise BadRequest(f"hits must be a list of at most {MAX_BATCH} hit objects")
            parsed = [parse_hit(h) for h in hits]
            decisions = await asyncio.gather(
                *(self.limiter.hit(k, lim, c, mode=m) for k, lim, c, m in parsed)
            )
        except (BadRequest, RateLimitError) as exc:
            return _error(exc)
        return web.json_response({"decisions": [decision_json(d) for d in decisions]})

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            key = body.get("key") if isinstance(body, dict) else None
            if not isinstance(key, str) or not key:
                raise BadRequest("key must be a non-empty string")
            await self.limiter.reset(key)
        except (BadRequest, RateLimitError) as exc:
            return _error(exc)
        return web.Response(status=204)

    async def _owner(self, request: web.Request) -> web.StreamResponse:
        key = request.query.get("key", "")
        if not key:
            return _error(BadRequest("give ?key="))
        replicas = self.limiter.node.preference_list(key.encode(), self.limiter.replication)
        return web.json_response({"key": key, "owner": replicas[0], "replicas": list(replicas)})

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        ok = self.ready and self.limiter.node.running and self.limiter.node.ready
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def _cluster(self, request: web.Request) -> web.StreamResponse:
        node = self.limiter.node
        return web.json_response(
            {
                "self": node.address,
                "ready": node.running and node.ready,
                "members": sorted(node.ring.members),
                "stats": self.limiter.stats(),
            }
        )

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        body = generate_latest(self.limiter.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _error(exc: Exception) -> web.StreamResponse:
    status = 503 if isinstance(exc, OwnerUnavailableError) else 400
    return web.json_response({"error": str(exc), "type": type(exc).__name__}, status=status)
