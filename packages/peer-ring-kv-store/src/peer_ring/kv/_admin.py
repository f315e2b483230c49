"""Admin routes of the ``serve`` HTTP API (used by ``peer-ring-kv admin`` and the ``/ui`` page).

Routes (token-protected like the rest of the API)::

    GET  /admin/nodes                 every member's load and data-movement state (fan-out)
    GET  /admin/ring?replication=&lists=1  this node's partition table (owner per partition,
                                      as indices into ``members``) and preference lists
    GET  /admin/key/{key}?replication= the key's partition, preference list, and each
                                      replica's local record (version, tombstone, expiry)
    POST /admin/drain                 graceful leave of this node (as on SIGTERM), then exit

``/admin/nodes`` asks each member over the peer protocol (namespace ``kv-admin``, command
``stats``) for its store counters and a summary of its handoff state, so one HTTP endpoint
shows the whole cluster: a member that does not answer (down, or an older version without
the command) is listed with its error instead of failing the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from peer_ring.core import Command, CommandContext, InvalidArgumentError, PeerRing, PeerRingError
from peer_ring.kv._store import GET, NAMESPACE
from peer_ring.kv._wire import decode_get_response

logger = logging.getLogger(__name__)

#: Namespace of the per-node admin commands (separate from the store's own ``kv``).
ADMIN_NAMESPACE = "kv-admin"
#: Returns this node's counters as JSON (see :func:`node_summary`).
STATS = Command("stats")
#: Deadline of one peer's answer to an admin fan-out, seconds.
PEER_TIMEOUT = 2.0


def node_summary(store: Any) -> dict[str, Any]:
    """This node's load and data-movement state: store counters plus the handoff summary."""
    node: PeerRing = store.node
    stats = store.stats() if callable(getattr(store, "stats", None)) else {}
    handoff_fn = getattr(store, "handoff_state", None)
    handoff: Mapping[str, Any] = handoff_fn() if callable(handoff_fn) else {}
    parts = handoff.get("partitions", {}) if isinstance(handoff, Mapping) else {}
    hints = handoff.get("hints", {}) if isinstance(handoff, Mapping) else {}
    leave = handoff.get("leave", {}) if isinstance(handoff, Mapping) else {}
    return {
        "address": node.address,
        "ready": bool(handoff.get("ready", node.ready)) if isinstance(handoff, Mapping) else False,
        "stats": dict(stats),
        "handoff": {
            "pending_partitions": parts.get("pending", 0),
            "held_for_handoff": parts.get("held_for_handoff", 0),
            "records_received": parts.get("records_received", 0),
            "bytes_received": parts.get("bytes_received", 0),
            "handed_off": parts.get("handed_off", 0),
            "hints_pending": hints.get("pending_total", 0),
            "hints_pending_by_target": dict(hints.get("pending", {})),
            "leave_state": leave.get("state", "none"),
        },
        "time": time.time(),
    }


class AdminRoutes:
    """The ``/admin/*`` handlers over one store.

    Args:
        store: the :class:`~peer_ring.kv.KVStore` served (needs ``node``; ``stats()`` and
            ``handoff_state()`` are used when present).
        replication: the default replication (for ``/admin/key``).
        drain: called (once, after the answer is sent) by ``POST /admin/drain``; ``None``
            makes the route answer 501 (an embedded API with no process to stop).
    """

    def __init__(
        self, store: Any, replication: int, drain: Callable[[], Callable[[], None] | None]
    ) -> None:
        self._store = store
        self._replication = replication
        self._drain = drain
        self._draining = False

    def register(self) -> None:
        """Answer other members' ``stats`` requests (call before the node starts)."""
        try:
            self._store.node.register(ADMIN_NAMESPACE, STATS, self._h_stats)
        except InvalidArgumentError:
            # A second API over the same node (tests): the first one's handler answers.
            logger.debug("%s/%s already registered", ADMIN_NAMESPACE, STATS.name)

    def install(self, router: web.UrlDispatcher) -> None:
        """Add the routes to ``router``."""
        router.add_get("/admin/nodes", self._nodes, name="admin_nodes")
        router.add_get("/admin/ring", self._ring, name="admin_ring")
        router.add_get(r"/admin/key/{key:.+}", self._key, name="admin_key")
        router.add_post("/admin/drain", self._drain_route, name="admin_drain")

    def _h_stats(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        return json.dumps(node_summary(self._store)).encode()

    async def _nodes(self, request: web.Request) -> web.StreamResponse:
        node: PeerRing = self._store.node
        members = list(node.ring.members)

        async def ask(address: str) -> dict[str, Any]:
            if address == node.address:
                return {"ok": True, **node_summary(self._store)}
            try:
                raw = await node.call(address, ADMIN_NAMESPACE, STATS, b"", timeout=PEER_TIMEOUT)
                return {"ok": True, **json.loads(raw)}
            except (PeerRingError, ValueError) as exc:
                return {"ok": False, "address": address, "error": f"{type(exc).__name__}: {exc}"}

        answers = await asyncio.gather(*(ask(m) for m in members))
        return web.json_response(
            {"self": node.address, "nodes": dict(zip(members, answers, strict=True))}
        )

    def _replication_of(self, request: web.Request) -> int:
        text = request.query.get("replication")
        try:
            n = int(text) if text is not None else self._replication
        except ValueError:
            n = 0
        if n < 1:
            # A typed error, not web.HTTPBadRequest: the API's error mapping keeps its
            # message (an aiohttp exception's body was replaced by its bare reason).
            raise InvalidArgumentError(f"replication must be an int >= 1, got {text!r}")
        return n

    async def _ring(self, request: web.Request) -> web.StreamResponse:
        n = self._replication_of(request)
        node: PeerRing = self._store.node
        ring = node.ring
        members = list(ring.members)
        index = {m: i for i, m in enumerate(members)}
        doc: dict[str, Any] = {
            "self": node.address,
            "members": members,
            "partitions": ring.partitions,
            "replication": n,
            "zones": {m: ring.zone_of(m) for m in members} if ring.zone_aware else {},
            "owners": [index[o] for o in ring.owners],
        }
        if request.query.get("lists", "") in ("1", "true", "yes"):
            doc["preference_lists"] = [
                [index[m] for m in ring.preference_list(p, n)] for p in range(ring.partitions)
            ]
        return web.json_response(doc)

    async def _key(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"].encode("utf-8", "surrogateescape")
        n = self._replication_of(request)
        node: PeerRing = self._store.node
        partition = node.partition_for_key(key)
        replicas = list(node.preference_list(key, n))

        async def read(address: str) -> dict[str, Any]:
            try:
                raw = await node.call(address, NAMESPACE, GET, key, b"", timeout=PEER_TIMEOUT)
                record = decode_get_response(raw)
            except (PeerRingError, ValueError) as exc:
                return {"node": address, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            if record is None:
                return {"node": address, "ok": True, "found": False}
            version = record.version
            return {
                "node": address,
                "ok": True,
                "found": True,
                "tombstone": record.tombstone,
                "expires": record.expires or None,
                "value_bytes": len(record.value),
                "version": {
                    "physical": version.physical,
                    "logical": version.logical,
                    "node_id": version.node_id,
                    "wall_time": version.wall_time,
                },
            }

        answers = await asyncio.gather(*(read(a) for a in replicas))
        # Consistent: every replica answered and all hold the same version (or none).
        versions = {json.dumps(a.get("version"), sort_keys=True) for a in answers}
        return web.json_response(
            {
                "key": key.decode("utf-8", "replace"),
                "partition": partition,
                "replication": n,
                "preference_list": replicas,
                "zones": {a: node.ring.zone_of(a) for a in replicas}
                if node.ring.zone_aware
                else {},
                "replicas": answers,
                "consistent": len(versions) == 1 and all(a["ok"] for a in answers),
            }
        )

    async def _drain_route(self, request: web.Request) -> web.StreamResponse:
        handler = self._drain()
        if handler is None:
            return web.json_response(
                {"error": "drain is not available here (no serve process to stop)"}, status=501
            )
        node: PeerRing = self._store.node
        if not self._draining:
            self._draining = True
            logger.warning("drain requested over HTTP by %s: leaving the ring", request.remote)
            # After the answer is on its way: the leave stops the HTTP server too.
            asyncio.get_running_loop().call_soon(handler)
        return web.json_response({"draining": True, "self": node.address}, status=202)
