"""From Kubernetes objects to peer-ring members: the readiness semantics, pure functions.

Which endpoints are members decides whether a cold start forms one ring or several, so
the rule is kept here, apart from any I/O, and unit-tested on plain dictionaries:

* An endpoint that is **not ready but not terminating** is a member. A peer-ring node
  becomes Ready only after it joined the ring and synced (``/readyz``); if discovery
  waited for readiness, simultaneously starting pods would each see an empty ring, each
  become "ready" alone, and form split rings (the failure reported by users of Hazelcast,
  Olric and Gubernator). The headless Service therefore sets
  ``publishNotReadyAddresses: true`` and discovery ignores ``ready``.
* An endpoint whose ``terminating`` condition is true is **not** a member: the pod got
  SIGTERM and is handing its data off; the others must stop routing to it and take over
  its partitions (re-replication).
* A missing condition is read as Kubernetes defines it: ``ready``/``serving`` unknown is
  "ready", ``terminating`` unknown is "not terminating".

Objects are the JSON dictionaries the API server sends (``Obj``), never client models: a
watch BOOKMARK carries only ``metadata``, which the generated models refuse to parse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from peer_ring.core import Member

#: A Kubernetes object as decoded from JSON.
Obj = Mapping[str, Any]

#: The address families an EndpointSlice can carry that peer-ring can dial.
AddressType = Literal["IPv4", "IPv6"]

#: Member metadata keys set by this module.
META_ZONE = "zone"
META_NODE = "node"
META_POD = "pod"


def address_type_of(ip: str) -> AddressType:
    """The EndpointSlice ``addressType`` of an IP address literal.

    Raises:
        ValueError: ``ip`` is not an IP address.
    """
    return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"


def format_address(ip: str, port: int) -> str:
    """``host:port`` for an IP, with IPv6 in brackets (``[fd00::1]:7101``)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _metadata(**values: str | None) -> Mapping[str, str]:
    # Only non-empty values: an absent zone must read as absent, not as "".
    return MappingProxyType({k: v for k, v in values.items() if v})


def _slice_port(slice_: Obj, port_name: str | None, default_port: int) -> int | None:
    """The peer port of one EndpointSlice, or None when the named port is absent."""
    if port_name is None:
        return default_port
    for port in slice_.get("ports") or ():
        if port.get("name") == port_name and port.get("port"):
            return int(port["port"])
    return None


def members_from_endpoint_slices(
    slices: Iterable[Obj],
    *,
    port: int,
    port_name: str | None = None,
    address_type: AddressType = "IPv4",
) -> dict[str, Member]:
    """Members described by the EndpointSlices of one Service.

    Args:
        slices: the Service's EndpointSlices (any order; a Service may have several).
        port: the peer port of every member, used when ``port_name`` is None.
        port_name: when set, each slice's port of that name is the peer port, and slices
            without it contribute nothing (the Service does not expose the peer port there).
        address_type: the address family to use. A dual-stack Service has one slice per
            family listing the same pods; mixing them would count every pod twice.

    Returns:
        Members by address. An endpoint listed in several slices (which happens while
        the EndpointSlice controller rebalances) is one member, and a member as soon as
        one listing of it is not terminating.
    """
    result: dict[str, Member] = {}
    # Sorted by name so that the metadata kept for a duplicated endpoint is deterministic.
    for slice_ in sorted(slices, key=lambda s: str(s.get("metadata", {}).get("name", ""))):
        if slice_.get("addressType") != address_type:
            continue
        slice_port = _slice_port(slice_, port_name, port)
        if slice_port is None:
            continue
        for endpoint in slice_.get("endpoints") or ():
            conditions = endpoint.get("conditions") or {}
            # Not-ready endpoints are members on purpose (see the module docstring).
            if conditions.get("terminating") is True:
                continue
            addresses = endpoint.get("addresses") or ()
            if not addresses:
                continue
            # The API documents that consumers use the first address only.
            address = format_address(str(addresses[0]), slice_port)
            if address in result:
                continue
            target = endpoint.get("targetRef") or {}
            result[address] = Member(
                address,
                _metadata(
                    zone=endpoint.get("zone"),
                    node=endpoint.get("nodeName"),
                    pod=target.get("name") if target.get("kind", "Pod") == "Pod" else None,
                ),
            )
    return result


def _pod_ip(pod: Obj, address_type: AddressType) -> str | None:
    status = pod.get("status") or {}
    candidates = [p.get("ip") for p in status.get("podIPs") or () if p.get("ip")]
    if not candidates and status.get("podIP"):
        candidates = [status["podIP"]]
    for ip in candidates:
        try:
            if address_type_of(str(ip)) == address_type:
                return str(ip)
        except ValueError:
            continue
    return None


def members_from_pods(
    pods: Iterable[Obj], *, port: int, address_type: AddressType = "IPv4"
) -> dict[str, Member]:
    """Members described by Pods (the label-selector mode).

    A pod is a member once it has an IP of ``address_type`` and until it is deleted
    (``metadata.deletionTimestamp`` set: the pod is terminating) or has finished
    (phase ``Succeeded``/``Failed``). Readiness is ignored, as for EndpointSlices.
    Pods carry no zone (that is a Node label, which would need cluster-wide RBAC);
    use the EndpointSlice mode for zone-aware placement.

    Args:
        pods: the selected pods.
        port: the peer port of every member.
        address_type: the address family to use on dual-stack pods.

    Returns:
        Members by address.
    """
    result: dict[str, Member] = {}
    for pod in sorted(pods, key=lambda p: str(p.get("metadata", {}).get("name", ""))):
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        ip = _pod_ip(pod, address_type)
        if ip is None:
            continue
        address = format_address(ip, port)
        result.setdefault(
            address,
            Member(
                address,
                _metadata(node=(pod.get("spec") or {}).get("nodeName"), pod=meta.get("name")),
            ),
        )
    return result


def snapshot_key(members: Iterable[Member]) -> frozenset[tuple[str, tuple[tuple[str, str], ...]]]:
    """A value that changes exactly when the member set or a member's metadata changes.

    :class:`~peer_ring.core.Member` equality ignores metadata, so comparing member sets
    alone would swallow a zone change; this key is what snapshots are deduplicated on.
    """
    return frozenset((m.address, tuple(sorted(m.metadata.items()))) for m in members)
