"""``KVStore.cluster_status()``: the document ``GET /cluster`` serves, without the server,
and its ``clock_offsets`` (``KVStore.clock_offsets()``)."""

from __future__ import annotations

from typing import Any, Protocol

from peer_ring.core import PeerRing


class _StatusSource(Protocol):
    @property
    def node(self) -> PeerRing: ...

    @property
    def ready(self) -> bool: ...

    def handoff_state(self) -> dict[str, Any]: ...


def cluster_status(store: _StatusSource) -> dict[str, Any]:
    """This node's view of the cluster, JSON-friendly (the fields of ``GET /cluster``).

    ``self``, ``ready``, ``members``, ``suspected``, ``partitions``, ``replication``,
    ``quorum``, ``owned_partitions`` and ``replica_partitions`` (per member, at the store's
    replication), ``zones`` (when the placement is zone-aware), ``handoff`` (data movement)
    and, when the store measures them, ``clock_offsets``.
    """
    node = store.node
    ring = node.ring
    members = list(ring.members)
    n = node.config.replication
    status: dict[str, Any] = {
        "self": node.address,
        "ready": store.ready,
        "members": members,
        "suspected": sorted(node.membership.suspected),
        "partitions": ring.partitions,
        "replication": n,
        "quorum": node.config.quorum_for(n),
        "owned_partitions": {m: len(ring.partitions_of(m, 1)) for m in members},
        "replica_partitions": {m: len(ring.partitions_of(m, n)) for m in members},
        "zones": {m: ring.zone_of(m) for m in members} if ring.zone_aware else {},
        "handoff": store.handoff_state(),
    }
    offsets = getattr(store, "clock_offsets", None)
    if callable(offsets):
        status["clock_offsets"] = offsets()
    return status


def clock_offsets_snapshot(clock: dict[str, Any]) -> dict[str, Any]:
    """The core's clock-offset estimates in the KV store's format (``clock_offsets``).

    Args:
        clock: ``PeerRing.sync_status()["clock"]``: ``offsets``, ``rtt`` and ``age`` per
            peer, and the ``bound`` (``PeerRingConfig.max_clock_offset``).

    Returns:
        ``{"peers": {peer: {"offset", "rtt", "age"}}, "max_abs_offset", "warn_at"}`` in
        seconds: ``max_abs_offset`` is 0 before any estimate, ``warn_at`` the offset past
        which the core logs a warning (half the bound).
    """
    peers = {
        peer: {
            "offset": round(offset, 6),
            "rtt": round(clock["rtt"][peer], 6),
            "age": round(clock["age"][peer], 3),
        }
        for peer, offset in sorted(clock["offsets"].items())
    }
    worst = max((abs(p["offset"]) for p in peers.values()), default=0.0)
    return {"peers": peers, "max_abs_offset": worst, "warn_at": clock["bound"] / 2}
