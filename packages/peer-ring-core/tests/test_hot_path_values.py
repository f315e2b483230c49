"""The cheaper per-operation values of issue 23, round 4 keep their public behaviour.

``Reply`` and ``CommandContext`` are frozen dataclasses with a hand-written ``__init__``
(slot descriptors instead of ``object.__setattr__``); the dispatcher shares one context per
source and partition for keyed commands without a hint; the deadline wheel remembers the
tick of its latest ``add``. None of this may show to an application or change when a
deadline fires.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from peer_ring.core import Command, CommandContext, PeerRingConfig, Reply
from peer_ring.core.testing import FakeClock
from peer_ring.core.transport._deadlines import DeadlineWheel


def test_reply_is_still_a_frozen_dataclass_with_its_fields_and_defaults() -> None:
    assert dataclasses.is_dataclass(Reply)
    assert [(f.name, f.default) for f in dataclasses.fields(Reply)] == [
        ("node", dataclasses.MISSING),
        ("payload", b""),
        ("error", None),
    ]
    err = ValueError("x")
    reply = Reply("a:1", b"p", err)
    assert (reply.node, reply.payload, reply.error, reply.ok) == ("a:1", b"p", err, False)
    assert Reply("a:1") == Reply(node="a:1", payload=b"", error=None)
    assert Reply("a:1").ok
    assert Reply("a:1") != Reply("a:2")
    assert hash(Reply("a:1", b"p")) == hash(Reply("a:1", b"p"))
    assert repr(Reply("a:1", b"p")) == "Reply(node='a:1', payload=b'p', error=None)"
    assert dataclasses.replace(reply, error=None) == Reply("a:1", b"p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        reply.node = "b:1"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Reply()  # type: ignore[call-arg]


def test_command_context_is_still_a_frozen_dataclass_with_its_fields_and_defaults() -> None:
    assert dataclasses.is_dataclass(CommandContext)
    assert [f.name for f in dataclasses.fields(CommandContext)] == [
        "source",
        "partition",
        "hint",
        "local",
    ]
    ctx = CommandContext("a:1", 7)
    assert (ctx.source, ctx.partition, ctx.hint, ctx.local) == ("a:1", 7, "", False)
    assert ctx == CommandContext(source="a:1", partition=7, hint="", local=False)
    assert ctx != CommandContext("a:1", 7, local=True)
    assert hash(ctx) == hash(CommandContext("a:1", 7))
    assert repr(ctx) == "CommandContext(source='a:1', partition=7, hint='', local=False)"
    assert dataclasses.replace(ctx, hint="b:1").hint == "b:1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.partition = 8  # type: ignore[misc]


# -- the shared contexts, seen by handlers -----------------------------------------------

ADDRS = [f"127.0.0.{i}:7501" for i in range(1, 4)]
PUT = Command("put", mutates=True)
GET = Command("get", reads=True)


class Seen:
    def __init__(self, address: str) -> None:
        self.address = address
        self.contexts: list[tuple[bytes, CommandContext]] = []

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.contexts.append((key, ctx))
        return b"ok"

    def get(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.contexts.append((key, ctx))
        return b"v"


#: ``app_cluster(...)``: an ``AppCluster`` of conftest.py.
ClusterFactory = Callable[..., Any]
#: ``memory_config(partitions, replication)`` of conftest.py.
ConfigFactory = Callable[[int, int], PeerRingConfig]


async def test_handlers_see_the_right_context_for_every_source_and_partition(
    app_cluster: ClusterFactory, memory_config: ConfigFactory
) -> None:
    cluster = app_cluster(
        memory_config(16, 3), lambda node: Seen(node.address), {PUT: Seen.put, GET: Seen.get}
    )
    ring_nodes = await cluster.start_ready(ADDRS)
    seen: dict[str, Seen] = cluster.apps
    keys = [f"k{i}".encode() for i in range(40)]
    for _ in range(2):  # the second round is served from the shared contexts
        for i, key in enumerate(keys):
            coordinator = ring_nodes[i % 3]
            await coordinator.execute("t", PUT, key, b"x")
            await coordinator.execute("t", GET, key, b"", quorum=3)
    for app in seen.values():
        assert len(app.contexts) == 2 * 2 * len(keys)  # every node replicates every key
        for key, ctx in app.contexts:
            source = ring_nodes[keys.index(key) % 3].address
            assert ctx.source == source
            assert ctx.local is (source == app.address)
            assert ctx.partition == ring_nodes[0].partition_for_key(key)
            assert ctx.hint == ""


# -- the deadline wheel's latest tick ----------------------------------------------------
# (Removing an item from the latest tick: test_mut_deadlines.py,
# test_removed_items_do_not_expire_the_rest_of_their_tick_does.)


class Item:
    def __init__(self) -> None:
        self.expired = 0

    def expire(self) -> None:
        self.expired += 1


def test_adds_after_the_latest_tick_fired_get_a_timer_of_their_own() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    first, second, third = Item(), Item(), Item()
    tick = wheel.add(first, 0.0)
    assert wheel.add(second, 0.0) == tick  # the remembered tick
    clock.advance(0.5)
    assert (first.expired, second.expired) == (1, 1)
    assert clock.pending_timers == 0
    # Same "now + timeout" as before the tick fired would round to a later tick.
    assert wheel.add(third, 0.0) == tick + 1
    assert clock.pending_timers == 1
    clock.advance(0.5)
    assert third.expired == 1


def test_close_forgets_the_latest_tick() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    before, after = Item(), Item()
    tick = wheel.add(before, 1.0)
    wheel.close()
    assert wheel.add(after, 1.0) == tick
    assert clock.pending_timers >= 1
    clock.advance(2.0)
    assert (before.expired, after.expired) == (0, 1)
