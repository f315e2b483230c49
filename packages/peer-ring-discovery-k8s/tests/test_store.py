"""The list+watch state machine, driven with hand-written events (no I/O)."""

from __future__ import annotations

from typing import Any

from peer_ring.discovery.k8s._store import ObjectStore, Outcome, StatusError


def obj(name: str, rv: str, **fields: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}, **fields}


def test_list_then_events_track_objects_and_resource_version() -> None:
    store = ObjectStore()
    store.replace([obj("a", "5"), obj("b", "6")], "10")
    assert set(store.objects) == {"a", "b"} and store.resource_version == "10"
    assert store.apply({"type": "ADDED", "object": obj("c", "11")}) is Outcome.CHANGED
    assert store.apply({"type": "MODIFIED", "object": obj("a", "12", x=1)}) is Outcome.CHANGED
    assert store.objects["a"]["x"] == 1
    assert store.apply({"type": "DELETED", "object": obj("b", "13")}) is Outcome.CHANGED
    assert set(store.objects) == {"a", "c"} and store.resource_version == "13"


def test_bookmark_moves_the_resource_version_without_a_change() -> None:
    store = ObjectStore()
    store.replace([obj("a", "5")], "10")
    bookmark = {
        "type": "BOOKMARK",
        "object": {"kind": "EndpointSlice", "metadata": {"resourceVersion": "99"}},
    }
    assert store.apply(bookmark) is Outcome.UNCHANGED
    assert store.resource_version == "99"
    assert set(store.objects) == {"a"}


def test_410_error_event_asks_for_a_relist_and_other_errors_for_a_rewatch() -> None:
    store = ObjectStore()
    store.replace([], "10")
    gone = {
        "type": "ERROR",
        "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"},
    }
    assert store.apply(gone) is Outcome.EXPIRED
    assert store.last_error == StatusError(410, "Expired", "too old")
    assert store.resource_version == "10"  # an error does not move the version
    other = {"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcd"}}
    assert store.apply(other) is Outcome.ERROR


def test_relist_replaces_everything_so_deletes_missed_during_a_gap_disappear() -> None:
    store = ObjectStore()
    store.replace([obj("a", "1"), obj("b", "2")], "2")
    store.replace([obj("a", "1"), obj("c", "7")], "9")
    assert set(store.objects) == {"a", "c"} and store.resource_version == "9"


def test_unknown_event_types_keep_progress_but_change_nothing() -> None:
    store = ObjectStore()
    store.replace([obj("a", "1")], "2")
    assert store.apply({"type": "SOMETHING_NEW", "object": obj("z", "3")}) is Outcome.UNCHANGED
    assert set(store.objects) == {"a"} and store.resource_version == "3"


def test_status_error_reads_http_code_when_body_has_none() -> None:
    status = StatusError.from_obj({"message": "nope"}, 403)
    assert status.code == 403 and not status.expired
    assert StatusError.from_obj({"reason": "Expired"}).expired
