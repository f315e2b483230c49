"""Member keys and values, prefix validation, and the revision-guarded view (pure)."""

from __future__ import annotations

import json

import pytest

from peer_ring.core import InvalidArgumentError, Member
from peer_ring.discovery.etcd import DEFAULT_PREFIX, normalize_prefix
from peer_ring.discovery.etcd._members import (
    check_address,
    decode_member,
    encode_member,
    member_key,
    snapshot_key,
)
from peer_ring.discovery.etcd._view import KeyValue, Listing, MemberView, WatchEvent

P = "/peer-ring/test/"


@pytest.mark.parametrize(
    ("given", "expected"),
    [("/peer-ring/a", "/peer-ring/a/"), ("/x/", "/x/"), (DEFAULT_PREFIX, DEFAULT_PREFIX)],
)
def test_prefix_is_normalized(given: str, expected: str) -> None:
    assert normalize_prefix(given) == expected


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("", "non-empty"),
        ("peer-ring/", "must start with '/'"),
        ("/", "whole keyspace"),
        ("/a b/", "whitespace"),
        ("/a//b/", "empty segment"),
        ("/a\x00/", "NUL"),
    ],
)
def test_bad_prefix_is_refused_with_the_reason(bad: str, says: str) -> None:
    with pytest.raises(InvalidArgumentError, match=says):
        normalize_prefix(bad)


@pytest.mark.parametrize("good", ["10.0.0.1:7100", "node-1.svc:1", "[::1]:7100"])
def test_addresses(good: str) -> None:
    assert check_address(good) == good


@pytest.mark.parametrize("bad", ["", "host", "host:", ":7100", "h:0", "h:70000", "a/b:1", "h :1"])
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(InvalidArgumentError):
        check_address(bad)


def test_a_member_round_trips_with_its_metadata() -> None:
    member = Member("10.0.0.1:7100", {"zone": "b", "rack": "r1"})
    key = member_key(P, member.address)
    assert key == b"/peer-ring/test/10.0.0.1:7100"
    value = encode_member(member)
    assert json.loads(value) == {"address": member.address, "metadata": {"rack": "r1", "zone": "b"}}
    decoded = decode_member(P, key, value)
    assert decoded == member
    assert decoded is not None and dict(decoded.metadata) == {"zone": "b", "rack": "r1"}


def test_the_key_is_authoritative_over_an_undecodable_value() -> None:
    decoded = decode_member(P, b"/peer-ring/test/10.0.0.9:1", b"\xff not json")
    assert decoded == Member("10.0.0.9:1")
    assert dict(decoded.metadata) == {}
    # Non-string metadata entries are dropped, strings kept.
    value = json.dumps({"metadata": {"zone": "a", "n": 3}}).encode()
    decoded = decode_member(P, b"/peer-ring/test/h:2", value)
    assert decoded is not None and dict(decoded.metadata) == {"zone": "a"}


def test_foreign_keys_are_not_members() -> None:
    assert decode_member(P, b"/peer-ring/test/lock", b"{}") is None
    assert decode_member(P, b"/other/h:1", b"{}") is None
    assert decode_member(P, b"/peer-ring/test/\xff:1", b"{}") is None


def test_snapshot_key_sees_metadata_changes() -> None:
    a = frozenset({Member("h:1", {"zone": "a"})})
    b = frozenset({Member("h:1", {"zone": "b"})})
    assert a == b  # Member equality ignores metadata...
    assert snapshot_key(a) != snapshot_key(b)  # ...the snapshot key does not


def kv(address: str, revision: int, zone: str = "a") -> KeyValue:
    member = Member(address, {"zone": zone})
    return KeyValue(member_key(P, address), encode_member(member), revision)


def put(address: str, revision: int, zone: str = "a") -> WatchEvent:
    item = kv(address, revision, zone)
    return WatchEvent("put", item.key, item.value, revision)


def delete(address: str, revision: int) -> WatchEvent:
    return WatchEvent("delete", member_key(P, address), b"", revision)


def addresses(view: MemberView) -> set[str]:
    return {m.address for m in view.members.values()}


def test_view_applies_only_events_newer_than_the_listing() -> None:
    view = MemberView(P)
    assert view.replace(Listing(10, (kv("h:1", 5), kv("h:2", 9))))
    assert addresses(view) == {"h:1", "h:2"} and view.revision == 10
    # A watch opened at the listed revision + 1 never replays these; a racing re-list
    # or a replay must not undo the listing either.
    assert not view.apply([delete("h:2", 9), put("h:3", 10)])
    assert addresses(view) == {"h:1", "h:2"}
    assert view.apply([put("h:3", 11), delete("h:1", 12)])
    assert addresses(view) == {"h:2", "h:3"} and view.revision == 12
    assert not view.apply([put("h:3", 11)])  # replayed


def test_view_reports_metadata_changes_and_ignores_unchanged_puts() -> None:
    view = MemberView(P)
    view.replace(Listing(3, (kv("h:1", 2, "a"),)))
    assert not view.apply([put("h:1", 4, "a")])  # keep-alive style rewrite: no change
    assert view.apply([put("h:1", 5, "b")])
    assert dict(view.members[member_key(P, "h:1")].metadata) == {"zone": "b"}


def test_view_adopts_a_listing_from_a_restored_etcd() -> None:
    view = MemberView(P)
    view.replace(Listing(100, (kv("h:1", 50),)))
    # etcd was restored from an older snapshot: its revision went backwards.
    assert view.replace(Listing(40, (kv("h:2", 30),)))
    assert addresses(view) == {"h:2"} and view.revision == 40
    assert not view.replace(Listing(40, ()))  # the same revision again: nothing new


def test_same_members_compares_metadata() -> None:
    view = MemberView(P)
    view.replace(Listing(3, (kv("h:1", 2, "a"),)))
    assert view.same_members(Listing(9, (kv("h:1", 7, "a"),)))
    assert not view.same_members(Listing(9, (kv("h:1", 7, "b"),)))
    assert not view.same_members(Listing(9, ()))
