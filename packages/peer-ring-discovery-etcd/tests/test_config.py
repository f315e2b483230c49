"""Configuration: the constructor's checks and ``from_serve_options`` (no etcd needed)."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from peer_ring.core import Discovery, InvalidArgumentError
from peer_ring.discovery.etcd import DEFAULT_TTL, EtcdDiscovery, from_serve_options
from peer_ring.discovery.etcd._client import EtcdClient, parse_endpoint


def test_defaults() -> None:
    d = EtcdDiscovery(self_address="127.0.0.1:7100")
    assert isinstance(d, Discovery)
    assert d.self_address == "127.0.0.1:7100"
    assert d.prefix == "/peer-ring/default/"
    assert d.ttl == DEFAULT_TTL == 15
    assert not d.stale
    assert {m.address for m in d.members} == {"127.0.0.1:7100"}


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"prefix": "/"}, "whole keyspace"),
        ({"prefix": "nope"}, "must start with '/'"),
        ({"self_address": "nohost"}, "host:port"),
        ({"ttl": 1}, "ttl"),
        ({"ttl": 5, "keepalive_timeout": 5.0}, "keepalive_timeout"),
        ({"request_timeout": 0}, "request_timeout"),
        ({"endpoints": "https://etcd:2379"}, "TLS is not supported"),
        ({"endpoints": "etcd"}, "not host:port"),
        ({"endpoints": ""}, "at least one"),
        ({"metadata": {"zone": 3}}, "str to str"),
        ({"username": "u"}, "password"),
    ],
)
def test_bad_configuration_fails_at_once(kwargs: dict[str, object], says: str) -> None:
    kwargs.setdefault("self_address", "127.0.0.1:7100")
    with pytest.raises(InvalidArgumentError, match=says):
        EtcdDiscovery(**kwargs)  # type: ignore[arg-type]


def test_endpoints() -> None:
    assert parse_endpoint("http://10.0.0.1:2379/") == ("10.0.0.1", 2379)
    assert parse_endpoint("[::1]:2379") == ("::1", 2379)
    client = EtcdClient(["a:1", "b:2"])
    assert client.endpoint == "a:1"


def test_serve_options_map_to_the_constructor() -> None:
    d = from_serve_options(
        "127.0.0.1:7100",
        {
            "endpoints": "127.0.0.1:2379,127.0.0.2:2379",
            "prefix": "/kv/prod",
            "ttl": "20",
            "keepalive-timeout": "1.5",
            "metadata": "zone=a,rack=r1",
        },
        {},
    )
    assert d.self_address == "127.0.0.1:7100"
    assert d.prefix == "/kv/prod/"
    assert d.ttl == 20
    assert dict(next(iter(d.members)).metadata) == {"zone": "a", "rack": "r1"}


def test_meta_options_add_labels() -> None:
    d = from_serve_options(
        "127.0.0.1:7100", {"metadata": "zone=a,rack=r1", "meta.zone": "b", "meta.os": "x"}, {}
    )
    assert dict(next(iter(d.members)).metadata) == {"zone": "b", "rack": "r1", "os": "x"}
    with pytest.raises(ValueError, match="needs a key"):
        from_serve_options("127.0.0.1:7100", {"meta.": "x"}, {})


def test_serve_options_fall_back_to_the_environment() -> None:
    d = from_serve_options(
        "127.0.0.1:7100",
        {"prefix": "/from/option"},
        {"PEER_RING_ETCD_PREFIX": "/from/env", "PEER_RING_ETCD_TTL": "9"},
    )
    assert d.prefix == "/from/option/" and d.ttl == 9


@pytest.mark.parametrize(
    ("listen", "options", "says"),
    [
        ("127.0.0.1:7100", {"endpoint": "x:1"}, "unknown option.*endpoints"),
        ("127.0.0.1:7100", {"ttl": "soon"}, "ttl='soon'"),
        ("127.0.0.1:7100", {"prefix": "/"}, "whole keyspace"),
        ("127.0.0.1:7100", {"metadata": "zone"}, "KEY=VALUE"),
        (None, {}, "--listen"),
        ("0.0.0.0:7100", {}, "wildcard"),
    ],
)
def test_bad_serve_options_raise_value_error(
    listen: str | None, options: dict[str, str], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        from_serve_options(listen, options, {})


def test_address_option_when_listen_is_not_given() -> None:
    d = from_serve_options(None, {"address": "10.0.0.5:7100"}, {})
    assert d.self_address == "10.0.0.5:7100"


def test_the_entry_point_is_installed() -> None:
    (ep,) = [e for e in entry_points(group="peer_ring.discovery") if e.name == "etcd"]
    assert ep.load() is from_serve_options
