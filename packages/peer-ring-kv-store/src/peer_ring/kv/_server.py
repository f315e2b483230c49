"""The HTTP API of ``peer-ring-kv serve`` (aiohttp), for applications in any language.

Routes (see the package README for the full contract)::

    PUT    /kv/{key}?ttl=&replication=&quorum=   body = value bytes        -> 204
    GET    /kv/{key}?replication=&quorum=        raw value bytes            -> 200 / 404
    DELETE /kv/{key}?replication=&quorum=                                   -> 204
    GET    /cluster    members, suspicion, partition counts, handoff state (JSON)
    GET    /healthz    200 while the process is up
    GET    /readyz     200 once the node has joined the ring, else 503
    GET    /metrics    Prometheus text format
    GET    /admin/nodes, GET /admin/key/{key}, POST /admin/drain   (see peer_ring.kv._admin)
    GET    /ui         the live web view of the ring (static files, see peer_ring.kv._ui)

Every error answer is JSON ``{"error": "<message>", ...}``. Store exceptions map to status
codes in one place (:func:`_error_response`): bad arguments 400, value too large 413, quorum
not reached 503 (naming the replicas that failed), timeout 504.

Keys are one URL path segment after ``/kv/``, percent-decoded as UTF-8; a ``/`` inside a
key may be sent raw or as ``%2F`` (both give the same key).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from aiohttp import HttpVersion11, web

from peer_ring.core import (
    InvalidArgumentError,
    MessageTooLargeError,
    NotRunningError,
    OverloadedError,
    PeerRing,
    PeerRingError,
    PeerUnavailableError,
    QuorumNotReachedError,
    RemoteError,
    RequestTimeoutError,
)
from peer_ring.kv._admin import AdminRoutes
from peer_ring.kv._batch_http import install_batch_routes
from peer_ring.kv._errors import ValueTooLargeError
from peer_ring.kv._http_server import KVHttpServer
from peer_ring.kv._metrics import METRICS_CONTENT_TYPE, KVMetrics
from peer_ring.kv._ui import UI_PATHS, install_ui

logger = logging.getLogger(__name__)

# KVHttpServer (binding and running the app) lives in its own module; importable from here.
__all__ = ["HTTPError", "KVBackend", "KVHttpApi", "KVHttpServer"]

_KV_PREFIX = "/kv/"
_READ_CHUNK = 64 * 1024
# Probes must work without credentials (kubelet and load balancers rarely carry them), and
# reveal nothing but "up" and "ready".
# The /ui page's static files hold no data (the page asks for the token to read /cluster).
_UNAUTHENTICATED = frozenset({"/healthz", "/readyz", *UI_PATHS})
_MISSING: Any = object()
#: Seconds between two log lines about refused tokens (every refusal is counted).
_REFUSAL_LOG_INTERVAL = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class KVBackend(Protocol):
    """What the HTTP API needs from a :class:`~peer_ring.kv.KVStore` (tests may fake it)."""

    @property
    def node(self) -> PeerRing: ...

    async def get(
        self,
        key: str,
        default: Any = None,
        *,
        quorum: int | None = None,
        replication: int | None = None,
    ) -> Any: ...

    async def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        quorum: int | None = None,
        replication: int | None = None,
    ) -> None: ...

    async def delete(
        self, key: str, *, quorum: int | None = None, replication: int | None = None
    ) -> None: ...

    def stats(self) -> Mapping[str, int | float]: ...


class HTTPError(Exception):
    """An error answer: status code, message and extra JSON fields."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


class KVHttpApi:
    """The request handlers of the HTTP API over one store.

    Args:
        store: the store requests are served from.
        http_token: when set, every route except ``/healthz`` and ``/readyz`` requires
            ``Authorization: Bearer <http_token>`` (401 otherwise).
        max_value_bytes: largest request body accepted on ``PUT /kv/{key}`` (413 beyond);
            defaults to the store's ``max_value_bytes`` (or 1 MiB).
        metrics: where request counts and latencies go; created when not given.
        replication: the store's default replication (for quorum checks and ``/cluster``);
            defaults to the store's ``replication`` attribute or the node's config.
        quorum: the store's default quorum (informational, shown in ``/cluster``).
    """

    def __init__(
        self,
        store: KVBackend,
        *,
        http_token: str | None = None,
        max_value_bytes: int | None = None,
        metrics: KVMetrics | None = None,
        replication: int | None = None,
        quorum: int | None = None,
    ) -> None:
        self._store = store
        self._token = http_token.encode() if http_token else None
        self._max_value_bytes = (
            max_value_bytes
            if max_value_bytes is not None
            else int(getattr(store, "max_value_bytes", 1 << 20))
        )
        store_replication = getattr(store, "replication", None)
        self._replication = (
            replication
            if replication is not None
            else store_replication
            if isinstance(store_replication, int)
            else store.node.config.replication
        )
        self._quorum = quorum if quorum is not None else getattr(store, "quorum", None)
        self._ready = False
        # Refusal kind -> (time of the last log line, refusals not logged since).
        self._refusals: dict[str, tuple[float, int]] = {}
        self.metrics = metrics or KVMetrics(
            store, ready=lambda: self.ready, replication=self._replication
        )
        #: Called by ``POST /admin/drain`` (``serve`` sets it to its shutdown: graceful
        #: leave, then exit); ``None`` answers 501.
        self.drain_handler: Callable[[], None] | None = None
        self._admin = AdminRoutes(store, self._replication, lambda: self.drain_handler)
        self._admin.register()

    # -- readiness ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once :meth:`set_ready` was called and the node (and store) report ready.

        The store may expose a ``ready`` attribute (initial sync finished, issue #4); until
        it does, a started node counts as ready.
        """
        if not self._ready or not self._store.node.running:
            return False
        store_ready = getattr(self._store, "ready", True)
        return bool(store_ready() if callable(store_ready) else store_ready)

    def set_ready(self, ready: bool) -> None:
        """Mark the node ready (after start) or not (when shutting down)."""
        self._ready = ready

    # -- the application -----------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """Build the aiohttp application (routes and middleware)."""
        app = web.Application(middlewares=[self._middleware])
        # The body is streamed and bounded by us (_read_body): aiohttp's own limit only
        # applies to request.read(), which we never call.
        router = app.router
        # [\s\S], not ".": a key may hold a newline (%0A), which "." does not match.
        kv = router.add_resource(r"/kv/{key:[\s\S]+}", name="kv")
        kv.add_route("GET", self._get)  # adds HEAD too
        kv.add_route("PUT", self._put, expect_handler=self._expect_put)
        kv.add_route("DELETE", self._delete)
        for path in ("/kv", "/kv/"):
            router.add_resource(path).add_route("*", self._empty_key)
        router.add_get("/cluster", self._cluster, name="cluster")
        router.add_get("/healthz", self._healthz, name="healthz")
        router.add_get("/readyz", self._readyz, name="readyz")
        router.add_get("/metrics", self._metrics, name="metrics")
        self._admin.install(router)
        if hasattr(self._store, "mdelete"):  # a KVStore (test fakes may lack the batches)
            install_batch_routes(router, self._store, self._max_value_bytes)
        install_ui(router)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        try:
            self._authorize(request)
            response = await handler(request)
        except asyncio.CancelledError:
            raise  # the client went away; nothing to answer
        except Exception as exc:
            response = _error_response(exc, request)
        self.metrics.observe(_op_name(request), response.status, time.perf_counter() - start)
        return response

    def _authorize(self, request: web.Request) -> None:
        if self._token is None or request.path in _UNAUTHENTICATED:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            self._refuse(request, "missing")
            raise HTTPError(401, "missing bearer token (Authorization: Bearer <token>)")
        # Constant-time comparison: the token must not leak through response timing. Bytes,
        # because compare_digest refuses non-ASCII str; surrogateescape, because aiohttp
        # decodes header bytes that are not UTF-8 that way (and they must not cause a 500).
        offered = credentials.strip().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(offered, self._token):
            self._refuse(request, "invalid")
            raise HTTPError(401, "invalid bearer token")

    def _refuse(self, request: web.Request, reason: str) -> None:
        self.metrics.auth_failure(reason)
        now = time.monotonic()
        last, suppressed = self._refusals.get(reason, (-math.inf, 0))
        if now - last < _REFUSAL_LOG_INTERVAL:
            # Counted (metrics) but not logged: a client in a loop must not flood the log.
            self._refusals[reason] = (last, suppressed + 1)
            return
        self._refusals[reason] = (now, 0)
        logger.warning(
            "refused %s %s from %s: %s bearer token (%d similar refusal(s) not logged)",
            request.method,
            request.path,
            request.remote,
            reason,
            suppressed,
        )

    # -- /kv ------------------------------------------------------------------------------------

    async def _get(self, request: web.Request) -> web.StreamResponse:
        key = _key(request)
        replication, quorum = self._replication_quorum(request, allowed=("replication", "quorum"))
        value = await self._store.get(key, _MISSING, quorum=quorum, replication=replication)
        if value is _MISSING:
            raise HTTPError(404, f"key {key!r} not found", key=key)
        return _value_response(key, value)

    async def _put(self, request: web.Request) -> web.StreamResponse:
        key = _key(request)
        replication, quorum = self._replication_quorum(
            request, allowed=("replication", "quorum", "ttl")
        )
        ttl = _ttl(request)
        body = await self._read_body(request)
        await self._store.set(key, body, ttl=ttl, quorum=quorum, replication=replication)
        return web.Response(status=204)

    async def _expect_put(self, request: web.Request) -> web.StreamResponse | None:
        # `Expect: 100-continue` (curl sends it for large bodies) asks whether to upload at
        # all: answer with the final error when the body would be refused anyway, so an
        # oversized value or an unauthenticated client never uploads its body.
        try:
            self._authorize(request)
            declared = request.content_length
            if declared is not None and declared > self._max_value_bytes:
                raise _too_large(declared, self._max_value_bytes)
        except HTTPError as exc:
            response = _error_response(exc, request)
            self.metrics.observe("kv_put", response.status, 0.0)
            return response
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers['Expect']}")
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the interim answer is not the response body
        return None

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        key = _key(request)
        replication, quorum = self._replication_quorum(request, allowed=("replication", "quorum"))
        await self._store.delete(key, quorum=quorum, replication=replication)
        return web.Response(status=204)

    async def _empty_key(self, request: web.Request) -> web.StreamResponse:
        raise HTTPError(400, "empty key: use /kv/{key} with a non-empty key")

    def _replication_quorum(
        self, request: web.Request, *, allowed: tuple[str, ...]
    ) -> tuple[int | None, int | None]:
        unknown = sorted(set(request.query) - set(allowed))
        if unknown:
            # Strict on purpose: a typo such as `qourum=3` must not silently fall back to the
            # default consistency level.
            raise HTTPError(
                400,
                f"unknown query parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}",
            )
        replication = _positive_int(request, "replication")
        quorum = _positive_int(request, "quorum")
        effective = replication if replication is not None else self._replication
        if quorum is not None and quorum > effective:
            raise HTTPError(
                400,
                f"quorum ({quorum}) cannot be greater than replication ({effective})",
                quorum=quorum,
                replication=effective,
            )
        return replication, quorum

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._max_value_bytes
        declared = request.content_length
        # Refuse before reading a byte when the client announces an oversized body ...
        if declared is not None and declared > limit:
            raise _too_large(declared, limit)
        # ... and count while reading, for chunked bodies and lying Content-Length headers.
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.content.iter_chunked(_READ_CHUNK):
            total += len(chunk)
            if total > limit:
                raise _too_large(None, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    # -- cluster and probes ------------------------------------------------------------------

    async def _cluster(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.cluster_info())

    def cluster_info(self) -> dict[str, Any]:
        """The document served by ``GET /cluster``."""
        node = self._store.node
        ring = node.ring
        members = list(ring.members)
        n = self._replication
        return {
            "self": node.address,
            "ready": self.ready,
            "members": members,
            "suspected": sorted(node.membership.suspected),
            "partitions": ring.partitions,
            "replication": n,
            "quorum": self._quorum if self._quorum is not None else node.config.quorum_for(n),
            # Primary ownership and replica share at the default replication, per member.
            "owned_partitions": {m: len(ring.partitions_of(m, 1)) for m in members},
            "replica_partitions": {m: len(ring.partitions_of(m, n)) for m in members},
            # Zone of every member when the placement is zone-aware (else empty): a client
            # rebuilding the ring (docs/hash-spec.md, section 12) needs them.
            "zones": {m: ring.zone_of(m) for m in members} if ring.zone_aware else {},
            "handoff": _handoff_state(self._store),
            # Peers' wall-clock offsets to this node (docs/consistency.md).
            "clock_offsets": _clock_offsets(self._store),
        }

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        if self.ready:
            return web.json_response({"ready": True, "self": self._store.node.address})
        return web.json_response(
            {"ready": False, "error": "node is not ready (starting, syncing or stopping)"},
            status=503,
        )

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(body=self.metrics.render())
        # Set verbatim: the exposition type carries a `version` parameter that aiohttp's
        # content_type setter would not accept in one piece.
        response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return response


# -- helpers -------------------------------------------------------------------------------------


def _key(request: web.Request) -> str:
    # Decode from the raw path ourselves: aiohttp leaves invalid percent-escapes such as
    # %FF in place, and a key must be exactly the UTF-8 the client percent-encoded.
    raw = request.raw_path.split("?", 1)[0]
    encoded = raw[len(_KV_PREFIX) :] if raw.startswith(_KV_PREFIX) else ""
    try:
        key = unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "the key is not valid UTF-8 once percent-decoded") from None
    if not key:
        raise HTTPError(400, "empty key: use /kv/{key} with a non-empty key")
    return key


def _positive_int(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise HTTPError(400, f"{name} must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise HTTPError(400, f"{name} must be an integer >= 1, got {text!r}")
    return value


def _ttl(request: web.Request) -> float | None:
    text = request.query.get("ttl")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise HTTPError(400, f"ttl must be a number of seconds > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise HTTPError(400, f"ttl must be a finite number of seconds > 0, got {text!r}")
    return value


def _too_large(size: int | None, limit: int) -> HTTPError:
    if size is None:
        return HTTPError(413, f"value exceeds max_value_bytes={limit}", limit=limit)
    return HTTPError(
        413, f"value of {size} bytes exceeds max_value_bytes={limit}", size=size, limit=limit
    )


def _value_response(key: str, value: Any) -> web.Response:
    # Values written over HTTP are bytes and come back untouched. Values written by Python
    # applications through a codec may be other types: give them a faithful text form.
    if isinstance(value, bytes | bytearray | memoryview):
        return web.Response(body=bytes(value), content_type="application/octet-stream")
    if isinstance(value, str):
        return web.Response(text=value, content_type="text/plain", charset="utf-8")
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        raise HTTPError(
            500,
            f"the value of {key!r} is a {type(value).__name__}, which has no HTTP representation",
        ) from None
    return web.Response(text=text, content_type="application/json")


def _clock_offsets(store: KVBackend) -> Any:
    # Optional on the backend, like handoff_state: test fakes need not provide it.
    offsets = getattr(store, "clock_offsets", None)
    return offsets() if callable(offsets) else {}


def _handoff_state(store: KVBackend) -> Any:
    # The rebalancing work (issue #4) will report pending handoffs; until the store exposes
    # them, the shape is fixed so that clients can already read it.
    state = getattr(store, "handoff_state", None)
    if callable(state):
        state = state()
    if isinstance(state, Mapping):
        return dict(state)
    return {"pending": 0}


def _op_name(request: web.Request) -> str:
    # A bounded label set for metrics: never the raw path (keys would explode cardinality).
    route = request.match_info.route
    name = route.name if route is not None else None
    if name == "kv":
        return f"kv_{request.method.lower()}"
    if name:
        return name
    return "other"


def _json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _error_response(exc: Exception, request: web.Request) -> web.Response:
    """Map any exception raised while handling ``request`` to a JSON error answer."""
    if isinstance(exc, HTTPError):
        response = _json_error(exc.status, exc.message, **exc.extra)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="peer-ring-kv"'
        return response
    if isinstance(exc, web.HTTPException):
        # Router answers: unknown route (404), wrong method (405)...
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = sorted(exc.allowed_methods)
            response = _json_error(
                405,
                f"method {exc.method} is not allowed on {request.path}; "
                f"allowed: {', '.join(allowed)}",
                allowed=allowed,
            )
            response.headers["Allow"] = ", ".join(allowed)
            return response
        if exc.status == 404:
            return _json_error(404, f"no route for {request.path}")
        return _json_error(exc.status, exc.reason)
    if isinstance(exc, QuorumNotReachedError):
        failures = {node: f"{type(err).__name__}: {err}" for node, err in exc.failures.items()}
        return _json_error(
            503,
            str(exc),
            quorum=exc.quorum,
            succeeded=sorted(exc.succeeded),
            unreachable=sorted(exc.failures),
            failures=failures,
        )
    if isinstance(exc, ValueTooLargeError):
        return _json_error(413, str(exc), size=exc.size, limit=exc.limit)
    if isinstance(exc, MessageTooLargeError):
        return _json_error(413, str(exc))
    if isinstance(exc, InvalidArgumentError):
        return _json_error(400, str(exc))
    if isinstance(exc, RequestTimeoutError):
        return _json_error(504, str(exc))
    if isinstance(exc, NotRunningError):
        return _json_error(503, f"node is not ready: {exc}")
    if isinstance(exc, OverloadedError):
        response = _json_error(503, f"node is overloaded, retry later: {exc}")
        response.headers["Retry-After"] = "1"
        return response
    if isinstance(exc, PeerUnavailableError | RemoteError):
        return _json_error(502, str(exc))
    if isinstance(exc, PeerRingError):
        logger.warning("%s %s failed: %r", request.method, request.path, exc)
        return _json_error(500, f"{type(exc).__name__}: {exc}")
    logger.exception("%s %s failed unexpectedly", request.method, request.path)
    return _json_error(500, f"internal error: {type(exc).__name__}")
