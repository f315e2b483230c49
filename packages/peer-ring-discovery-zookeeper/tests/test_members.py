"""Pure parts: paths, addresses, the znode data layout, serve options (no server needed)."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest

from peer_ring.core import InvalidArgumentError, Member
from peer_ring.discovery.zookeeper import (
    DEFAULT_PATH,
    ZooKeeperDiscovery,
    decode_member,
    encode_member,
    from_serve_options,
)
from peer_ring.discovery.zookeeper._members import snapshot_key, validate_address, validate_path


@pytest.mark.parametrize(
    "path",
    ["relative", "/", "/a/", "/a//b", "/a/./b", "/a/../b", "/zookeeper/x", "/zookeeper", "/a\nb"],
)
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidArgumentError):
        validate_path(path)


def test_good_paths_pass() -> None:
    assert validate_path("/peer-ring/members") == "/peer-ring/members"
    assert validate_path("/zookeeper-apps/x") == "/zookeeper-apps/x"


@pytest.mark.parametrize(
    "address", ["", "host", ":7101", "h:0", "h:65536", "h:x", "a/b:1", "a b:1"]
)
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidArgumentError):
        validate_address(address)


def test_ipv6_addresses_pass() -> None:
    assert validate_address(" [fd00::1]:7101 ") == "[fd00::1]:7101"


def test_member_data_round_trips_with_metadata() -> None:
    member = Member("10.0.0.7:7101", {"zone": "eu-1a"})
    data = encode_member(member)
    assert json.loads(data) == {"v": 1, "address": "10.0.0.7:7101", "metadata": {"zone": "eu-1a"}}
    decoded = decode_member("10.0.0.7:7101", data)
    assert decoded == member
    assert decoded is not None and dict(decoded.metadata) == {"zone": "eu-1a"}


@pytest.mark.parametrize("data", [None, b"", b"not json", b"[1, 2]", b'{"metadata": 3}'])
def test_unreadable_data_still_makes_a_member(data: bytes | None) -> None:
    # The name is the identity: a node with foreign data still counts (without metadata).
    member = decode_member("10.0.0.7:7101", data)
    assert member == Member("10.0.0.7:7101")
    assert member is not None and dict(member.metadata) == {}


def test_a_name_that_is_not_an_address_is_not_a_member() -> None:
    assert decode_member("lock-0000000001", b"{}") is None


def test_snapshot_key_sees_metadata_changes() -> None:
    a = frozenset({Member("h:1", {"zone": "a"})})
    b = frozenset({Member("h:1", {"zone": "b"})})
    assert a == b  # Member equality ignores metadata...
    assert snapshot_key(a) != snapshot_key(b)  # ...the snapshot key does not


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hosts": ""}, "hosts is empty"),
        ({"hosts": "zk:2181/chroot"}, "chroot"),
        ({"hosts": "zk:abc"}, "port"),
        ({"path": "nope"}, "absolute"),
        ({"session_timeout": 0}, "session_timeout"),
        ({"metadata": {"zone": 1}}, "strings"),
        ({"digest": "no-colon"}, "user:password"),
    ],
)
def test_constructor_refuses_bad_configuration(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"hosts": "127.0.0.1:2181", **kwargs}
    hosts = args.pop("hosts")
    with pytest.raises(InvalidArgumentError, match=match):
        ZooKeeperDiscovery(hosts, "127.0.0.1:7101", **args)  # type: ignore[arg-type]


def test_serve_entry_point_is_registered() -> None:
    (ep,) = [e for e in entry_points(group="peer_ring.discovery") if e.name == "zookeeper"]
    assert ep.load() is from_serve_options


def test_serve_options_build_a_discovery() -> None:
    d = from_serve_options(
        "127.0.0.1:7101",
        {"hosts": "127.0.0.1:2181", "path": "/x/y", "session-timeout": "4", "meta.zone": "z1"},
        {},
    )
    assert d.self_address == "127.0.0.1:7101"
    assert d.path == "/x/y"
    (me,) = d.members
    assert dict(me.metadata) == {"zone": "z1"}


def test_serve_options_defaults_and_environment() -> None:
    env = {"PEER_RING_ZOOKEEPER_HOSTS": "zk:2181", "PEER_RING_ZOOKEEPER_DIGEST": "u:p"}
    d = from_serve_options(None, {"address": "127.0.0.2:7101"}, env)
    assert d._digest == "u:p"
    assert d.self_address == "127.0.0.2:7101"
    assert d.path == DEFAULT_PATH


@pytest.mark.parametrize(
    ("listen", "options", "match"),
    [
        ("h:1", {"hosts": "zk:2181", "endpoints": "x"}, "unknown option endpoints; valid: hosts"),
        ("h:1", {}, "hosts is required"),
        (None, {"hosts": "zk:2181"}, "--listen"),
        ("h:1", {"hosts": "zk:2181", "session-timeout": "soon"}, "session-timeout"),
        ("h:1", {"hosts": "zk:2181", "startup-timeout": "-1"}, "startup-timeout"),
        ("h:1", {"hosts": "zk:2181", "meta.": "x"}, "metadata key is empty"),
        ("h:1", {"hosts": "zk:2181", "path": "rel"}, "absolute"),
    ],
)
def test_serve_options_refuse_bad_settings(
    listen: str | None, options: dict[str, str], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        from_serve_options(listen, options, {})
