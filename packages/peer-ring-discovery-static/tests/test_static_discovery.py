from __future__ import annotations

import asyncio

import pytest

from peer_ring.core import InvalidArgumentError, Member
from peer_ring.discovery.static import StaticDiscovery, parse_address


async def test_members_many_loopback_ips_one_port() -> None:
    peers = ["127.0.0.1:7101", "127.0.0.2:7101", "127.0.0.3:7101"]
    d = StaticDiscovery(peers, self_address="127.0.0.2:7101")
    assert d.self_address == "127.0.0.2:7101"
    assert await d.start() == frozenset(Member(p) for p in peers)


async def test_members_one_ip_many_ports() -> None:
    peers = ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
    d = StaticDiscovery(peers, self_address="127.0.0.1:7103")
    members = await d.start()
    assert {m.address for m in members} == set(peers)


async def test_self_is_added_when_missing() -> None:
    d = StaticDiscovery(["127.0.0.1:7101"], self_address="127.0.0.1:7102")
    assert {m.address for m in await d.start()} == {"127.0.0.1:7101", "127.0.0.1:7102"}


async def test_watch_ends_on_stop() -> None:
    d = StaticDiscovery(["127.0.0.1:7101"], self_address="127.0.0.1:7101")
    await d.start()
    seen: list[frozenset[Member]] = []

    async def consume() -> None:
        async for members in d.watch():
            seen.append(members)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    assert not task.done()
    await d.stop()
    await asyncio.wait_for(task, 1.0)
    assert seen == []


def test_from_env() -> None:
    d = StaticDiscovery.from_env(
        {
            "PEER_RING_PEERS": "127.0.0.1:7101, 127.0.0.2:7101,,127.0.0.3:7101",
            "PEER_RING_SELF_ADDRESS": "127.0.0.3:7101",
        }
    )
    assert d.peers == {"127.0.0.1:7101", "127.0.0.2:7101", "127.0.0.3:7101"}
    assert d.self_address == "127.0.0.3:7101"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PEER_RING_PEERS": "127.0.0.1:7101"}, "PEER_RING_SELF_ADDRESS is not set"),
        ({"PEER_RING_SELF_ADDRESS": "127.0.0.1:7101"}, "PEER_RING_PEERS is not set"),
    ],
)
def test_from_env_missing(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        StaticDiscovery.from_env(env)


@pytest.mark.parametrize(
    "bad",
    [
        "127.0.0.1",
        "127.0.0.1:",
        ":7101",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "::1:7101",
        "[zz]:7101",
        "host:port",
    ],
)
def test_bad_addresses_rejected(bad: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_address(bad)
    with pytest.raises(InvalidArgumentError):
        StaticDiscovery([bad], self_address="127.0.0.1:7101")


def test_ipv6_address() -> None:
    assert parse_address("[::1]:7101") == ("[::1]", 7101)
