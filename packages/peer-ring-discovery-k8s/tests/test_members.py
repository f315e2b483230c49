"""Readiness semantics and address handling, on plain EndpointSlice and Pod dictionaries."""

from __future__ import annotations

from typing import Any

from peer_ring.core import Member
from peer_ring.discovery.k8s import members_from_endpoint_slices, members_from_pods
from peer_ring.discovery.k8s._members import address_type_of, format_address, snapshot_key


def ep(ip: str, **conditions: Any) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": conditions}


def eps(
    *endpoints: dict[str, Any], name: str = "s1", address_type: str = "IPv4", ports: Any = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "addressType": address_type,
        "endpoints": list(endpoints),
        "ports": ports if ports is not None else [{"name": "peer", "port": 7101}],
    }


def test_not_ready_endpoints_are_members_so_cold_starts_form_one_ring() -> None:
    members = members_from_endpoint_slices(
        [
            eps(
                ep("10.0.0.1", ready=True),
                ep("10.0.0.2", ready=False, serving=False, terminating=False),
            )
        ],
        port=7101,
    )
    assert set(members) == {"10.0.0.1:7101", "10.0.0.2:7101"}


def test_terminating_endpoints_are_not_members_even_when_still_ready() -> None:
    members = members_from_endpoint_slices(
        [eps(ep("10.0.0.1"), ep("10.0.0.2", ready=True, serving=True, terminating=True))],
        port=7101,
    )
    assert set(members) == {"10.0.0.1:7101"}


def test_missing_conditions_read_as_kubernetes_defines_them() -> None:
    slice_ = eps({"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"], "conditions": None})
    assert set(members_from_endpoint_slices([slice_], port=1)) == {"10.0.0.1:1", "10.0.0.2:1"}


def test_zone_node_and_pod_are_kept_in_metadata() -> None:
    endpoint = {
        "addresses": ["10.0.0.1"],
        "zone": "eu-west-1a",
        "nodeName": "node-1",
        "targetRef": {"kind": "Pod", "name": "kv-0"},
    }
    member = members_from_endpoint_slices([eps(endpoint)], port=7101)["10.0.0.1:7101"]
    assert dict(member.metadata) == {"zone": "eu-west-1a", "node": "node-1", "pod": "kv-0"}
    bare = members_from_endpoint_slices([eps(ep("10.0.0.2"))], port=7101)["10.0.0.2:7101"]
    assert "zone" not in bare.metadata


def test_only_the_wanted_address_family_is_used_on_dual_stack_services() -> None:
    slices = [
        eps(ep("10.0.0.1"), name="v4"),
        eps(ep("fd00::1"), name="v6", address_type="IPv6"),
        eps(ep("svc.example"), name="fqdn", address_type="FQDN"),
    ]
    assert set(members_from_endpoint_slices(slices, port=7101)) == {"10.0.0.1:7101"}
    v6 = members_from_endpoint_slices(slices, port=7101, address_type="IPv6")
    assert set(v6) == {"[fd00::1]:7101"}


def test_an_endpoint_in_two_slices_is_one_member_and_kept_if_either_is_live() -> None:
    slices = [
        eps(ep("10.0.0.1", terminating=True), name="a"),
        eps(ep("10.0.0.1", terminating=False), ep("10.0.0.2"), name="b"),
    ]
    assert set(members_from_endpoint_slices(slices, port=7101)) == {
        "10.0.0.1:7101",
        "10.0.0.2:7101",
    }


def test_named_port_is_read_from_each_slice_and_slices_without_it_are_skipped() -> None:
    slices = [
        eps(ep("10.0.0.1"), name="a", ports=[{"name": "peer", "port": 9000}]),
        eps(ep("10.0.0.2"), name="b", ports=[{"name": "http", "port": 8080}]),
    ]
    members = members_from_endpoint_slices(slices, port=7101, port_name="peer")
    assert set(members) == {"10.0.0.1:9000"}
    # Without a port name the configured port is used, even for a port-less headless Service.
    assert set(members_from_endpoint_slices(slices, port=7101)) == {
        "10.0.0.1:7101",
        "10.0.0.2:7101",
    }


def test_endpoints_without_addresses_or_slices_without_endpoints_are_ignored() -> None:
    slices = [
        eps({"addresses": [], "conditions": {}}),
        {"metadata": {"name": "x"}, "addressType": "IPv4"},
    ]
    assert members_from_endpoint_slices(slices, port=7101) == {}


def pod(
    name: str, ip: str | None, *, phase: str = "Running", deleting: bool = False, **extra: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {"metadata": meta, "spec": {"nodeName": "n1"}, "status": status, **extra}


def test_pods_mode_includes_pending_pods_with_an_ip_and_drops_terminating_or_finished() -> None:
    pods = [
        pod("a", "10.0.0.1"),
        pod("b", "10.0.0.2", phase="Pending"),
        pod("c", None, phase="Pending"),
        pod("d", "10.0.0.4", deleting=True),
        pod("e", "10.0.0.5", phase="Succeeded"),
        pod("f", "10.0.0.6", phase="Failed"),
    ]
    members = members_from_pods(pods, port=7101)
    assert set(members) == {"10.0.0.1:7101", "10.0.0.2:7101"}
    assert dict(members["10.0.0.1:7101"].metadata) == {"node": "n1", "pod": "a"}


def test_pods_mode_picks_the_ip_of_the_wanted_family() -> None:
    dual = pod("a", "10.0.0.1")
    dual["status"]["podIPs"] = [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]
    assert set(members_from_pods([dual], port=1, address_type="IPv6")) == {"[fd00::1]:1"}


def test_address_helpers() -> None:
    assert address_type_of("10.1.2.3") == "IPv4"
    assert address_type_of("fd00::2") == "IPv6"
    assert format_address("fd00::2", 7) == "[fd00::2]:7"
    assert format_address("10.1.2.3", 7) == "10.1.2.3:7"


def test_snapshot_key_sees_metadata_changes_that_member_equality_ignores() -> None:
    a = frozenset({Member("10.0.0.1:1", {"zone": "a"})})
    b = frozenset({Member("10.0.0.1:1", {"zone": "b"})})
    assert a == b  # Member identity is the address only...
    assert snapshot_key(a) != snapshot_key(b)  # ...but a zone change is still a change.
    assert snapshot_key(a) == snapshot_key(frozenset({Member("10.0.0.1:1", {"zone": "a"})}))
