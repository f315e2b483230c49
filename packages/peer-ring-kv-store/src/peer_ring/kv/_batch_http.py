"""HTTP routes of the batch operations: ``POST /batch/mget``, ``/batch/mset``,
``/batch/mdelete`` (JSON bodies; values travel base64-encoded, so any bytes fit).

Bodies::

    POST /batch/mget     {"keys": ["a", "b"], "quorum": 2}          -> 200 {"values": {...}}
    POST /batch/mset     {"items": {"a": "<base64>"}, "ttl": 30}    -> 204
    POST /batch/mdelete  {"keys": ["a", "b"]}                       -> 204

``replication`` and ``quorum`` are optional in every body. ``mget`` answers only the keys
that exist: ``{"values": {"a": {"b64": "..."}}}`` for bytes values and ``{"json": ...}`` for
values a Python client stored through the codec. Errors are the API's (400 bad body, 413 too
large, 503 quorum not reached).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any

from aiohttp import web

from peer_ring.core import InvalidArgumentError
from peer_ring.kv._errors import ValueTooLargeError

#: Most keys in one batch request.
MAX_BATCH_KEYS = 10_000


def install_batch_routes(router: web.UrlDispatcher, store: Any, max_value_bytes: int) -> None:
    """Add the batch routes for ``store`` (a :class:`KVStore`) to ``router``."""
    # A batch body holds many values (base64 grows them by a third), bounded all the same.
    limit = 16 * max_value_bytes + (1 << 20)

    async def body(request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > limit:
            raise ValueTooLargeError(request.content_length, limit)
        # readexactly, not read: read(n) returns what is buffered (one chunk of a chunked
        # body), which cut valid bodies short; EOF before limit + 1 bytes is the usual case.
        try:
            raw = await request.content.readexactly(limit + 1)
        except asyncio.IncompleteReadError as exc:
            raw = exc.partial
        if len(raw) > limit:
            raise ValueTooLargeError(len(raw), limit)
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidArgumentError("the body must be a JSON object") from None
        if not isinstance(parsed, dict):
            raise InvalidArgumentError("the body must be a JSON object")
        return parsed

    def sizes(doc: dict[str, Any]) -> dict[str, Any]:
        return {"replication": doc.get("replication"), "quorum": doc.get("quorum")}

    def keys_of(doc: dict[str, Any]) -> list[str]:
        keys = doc.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InvalidArgumentError('"keys" must be a list of strings')
        if len(keys) > MAX_BATCH_KEYS:
            raise InvalidArgumentError(f"at most {MAX_BATCH_KEYS} keys per request")
        return keys

    async def mget(request: web.Request) -> web.StreamResponse:
        doc = await body(request)
        found = await store.mget(keys_of(doc), **sizes(doc))
        values = {
            k: {"b64": base64.b64encode(v).decode()} if isinstance(v, bytes) else {"json": v}
            for k, v in found.items()
        }
        return web.json_response({"values": values})

    async def mset(request: web.Request) -> web.StreamResponse:
        doc = await body(request)
        items = doc.get("items")
        if not isinstance(items, dict) or not all(isinstance(v, str) for v in items.values()):
            raise InvalidArgumentError('"items" must be an object of key -> base64 value')
        if len(items) > MAX_BATCH_KEYS:
            raise InvalidArgumentError(f"at most {MAX_BATCH_KEYS} keys per request")
        try:
            decoded = {k: base64.b64decode(v, validate=True) for k, v in items.items()}
        except (binascii.Error, ValueError):
            raise InvalidArgumentError("an item's value is not valid base64") from None
        await store.mset(decoded, ttl=doc.get("ttl"), **sizes(doc))
        return web.Response(status=204)

    async def mdelete(request: web.Request) -> web.StreamResponse:
        doc = await body(request)
        await store.mdelete(keys_of(doc), **sizes(doc))
        return web.Response(status=204)

    router.add_post("/batch/mget", mget, name="batch_mget")
    router.add_post("/batch/mset", mset, name="batch_mset")
    router.add_post("/batch/mdelete", mdelete, name="batch_mdelete")
