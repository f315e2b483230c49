"""Reads sent to a quorum of replicas, not to all N (``PeerRingConfig.read_fanout``).

On the in-memory network and fake time: a reading command at R3/Q2 asks this node (when it
is a replica) and the next replica in preference order; the third is asked only when one
of them refuses, fails or stays silent past ``read_speculate_after``. Writes still go to
all N, and a read still sees every write acknowledged by a write quorum (R + W > N).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable

import pytest

from peer_ring.core import (
    Command,
    CommandContext,
    InvalidArgumentError,
    PeerRing,
    PeerRingConfig,
    QuorumNotReachedError,
)
from peer_ring.core.testing import (
    FakeClock,
    MemoryCluster,
    VersionedDict,
    versioned_payload,
)

pytestmark = pytest.mark.fake_time

ADDRS = [f"10.0.0.{i}:7000" for i in range(1, 5)]
GET = VersionedDict.GET
PUT = VersionedDict.PUT
FLAKY = Command("flaky", reads=True)


#: ``count_requests(node)`` of conftest.py: the requests ``node`` sends, per target.
RequestCounter = Callable[[PeerRing], Counter[str]]


def key_headed_by(node: PeerRing, n: int = 3) -> bytes:
    """A key whose preference list (of ``n``) starts with ``node``."""
    for i in range(10_000):
        key = f"key:{i}".encode()
        if node.preference_list(key, n)[0] == node.address:
            return key
    raise AssertionError("no key headed by the node")


def key_not_on(node: PeerRing, n: int = 3) -> bytes:
    """A key ``node`` does not replicate."""
    for i in range(10_000):
        key = f"key:{i}".encode()
        if not node.is_replica(key, n):
            return key
    raise AssertionError("the node replicates every key")


async def three(harness: MemoryCluster, **overrides: object) -> list[PeerRing]:
    harness.config = dataclasses.replace(harness.config, replication=3, **overrides)  # type: ignore[arg-type]
    return await harness.start_ready(ADDRS[:3])


async def test_a_read_asks_this_node_and_the_next_replica_only(
    harness: MemoryCluster, count_requests: RequestCounter
) -> None:
    a, _, _ = await three(harness)
    key = key_headed_by(a)
    prefs = a.preference_list(key, 3)
    await a.execute("app", PUT, key, versioned_payload(1, b"v"), quorum=3)
    sent = count_requests(a)
    result = await a.execute("app", GET, key)
    assert sorted(r.node for r in result.ok_replies) == sorted(prefs[:2])
    assert sent == Counter({prefs[1]: 1})  # the third replica is not asked
    assert result.payloads == [versioned_payload(1, b"v")] * 2
    await harness.until(lambda: result.complete)
    assert len(result.replies) == 2
    assert result.preference_list == prefs  # the key's replicas, not only those asked
    assert a.sync_status()["reads"] == {"speculative": 0, "retried": 0}


async def test_writes_still_go_to_every_replica(
    harness: MemoryCluster, count_requests: RequestCounter
) -> None:
    a, _, _ = await three(harness)
    key = key_headed_by(a)
    sent = count_requests(a)
    result = await a.execute("app", PUT, key, versioned_payload(1, b"v"))
    await harness.until(lambda: result.complete)
    assert sent == Counter(dict.fromkeys(a.preference_list(key, 3)[1:], 1))
    assert all(key in app.data for app in harness.apps.values())


async def test_a_coordinator_outside_the_list_asks_the_first_replicas(
    harness: MemoryCluster,
    count_requests: RequestCounter,
) -> None:
    harness.config = dataclasses.replace(harness.config, replication=3)
    a, *_ = await harness.start_ready(ADDRS)
    key = key_not_on(a)
    prefs = a.preference_list(key, 3)
    sent = count_requests(a)
    result = await a.execute("app", GET, key)
    assert sent == Counter({prefs[0]: 1, prefs[1]: 1})
    assert sorted(r.node for r in result.replies) == sorted(prefs[:2])


async def test_read_fanout_all_asks_every_replica(
    harness: MemoryCluster, count_requests: RequestCounter
) -> None:
    a, _, _ = await three(harness, read_fanout="all")
    key = key_headed_by(a)
    sent = count_requests(a)
    result = await a.execute("app", GET, key)
    await harness.until(lambda: result.complete)
    assert sent == Counter(dict.fromkeys(a.preference_list(key, 3)[1:], 1))
    assert len(result.replies) == 3


async def test_quorum_1_on_a_replica_asks_nobody_else(
    harness: MemoryCluster, count_requests: RequestCounter
) -> None:
    a, _, _ = await three(harness)
    key = key_headed_by(a)
    sent = count_requests(a)
    result = await a.execute("app", GET, key, quorum=1)
    assert [r.node for r in result.replies] == [a.address]
    assert result.complete
    assert sum(sent.values()) == 0


async def test_a_replica_whose_handler_fails_is_replaced_at_once(
    harness: MemoryCluster, count_requests: RequestCounter, clock: FakeClock
) -> None:
    a, b, c = await three(harness)
    key = key_headed_by(a)
    prefs = a.preference_list(key, 3)
    for node in (a, b, c):
        node.register("flaky", FLAKY, _refuse if node.address == prefs[1] else _answer)
    sent = count_requests(a)
    start = clock.monotonic()
    result = await a.execute("flaky", FLAKY, key)
    assert clock.monotonic() == start  # no wait: not the speculative delay
    assert sent == Counter({prefs[1]: 1, prefs[2]: 1})
    assert sorted(r.node for r in result.ok_replies) == sorted([prefs[0], prefs[2]])
    assert a.sync_status()["reads"]["retried"] == 1


def _refuse(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
    raise RuntimeError("refused")


def _answer(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
    return b"ok"


async def test_a_dead_replica_is_replaced_and_then_skipped(
    harness: MemoryCluster, count_requests: RequestCounter
) -> None:
    a, _, _ = await three(harness)
    key = key_headed_by(a)
    prefs = a.preference_list(key, 3)
    await a.execute("app", PUT, key, versioned_payload(1, b"v"), quorum=3)
    await harness.nodes[prefs[1]].stop()
    sent = count_requests(a)
    result = await a.execute("app", GET, key)
    assert sorted(r.node for r in result.ok_replies) == sorted([prefs[0], prefs[2]])
    assert sent == Counter({prefs[1]: 1, prefs[2]: 1})
    # The failure made the dead replica suspected: the next read starts with the live one.
    sent.clear()
    result = await a.execute("app", GET, key)
    assert sent == Counter({prefs[2]: 1})
    assert result.payloads == [versioned_payload(1, b"v")] * 2


async def test_a_slow_replica_gets_a_speculative_read_after_the_delay(
    harness: MemoryCluster, count_requests: RequestCounter, clock: FakeClock
) -> None:
    a, _, _ = await three(harness, read_speculate_after=0.05)
    key = key_headed_by(a)
    prefs = a.preference_list(key, 3)
    await a.execute("app", PUT, key, versioned_payload(1, b"v"), quorum=3)
    harness.network.pause(prefs[1])
    sent = count_requests(a)
    start = clock.monotonic()
    result = await a.execute("app", GET, key)
    took = clock.monotonic() - start
    assert 0.05 <= took < 0.1  # far below request_timeout (1 s)
    assert sorted(r.node for r in result.ok_replies) == sorted([prefs[0], prefs[2]])
    assert sent == Counter({prefs[1]: 1, prefs[2]: 1})
    assert a.sync_status()["reads"] == {"speculative": 1, "retried": 0}
    assert not result.complete  # the slow one is still awaited, until its timeout
    await harness.until(lambda: result.complete)
    assert [r.node for r in result.replies if not r.ok] == [prefs[1]]


async def test_without_speculation_a_silent_replica_costs_the_timeout(
    harness: MemoryCluster, clock: FakeClock
) -> None:
    a, _, _ = await three(harness, read_speculate_after=None)
    key = key_headed_by(a)
    prefs = a.preference_list(key, 3)
    harness.network.pause(prefs[1])
    start = clock.monotonic()
    result = await a.execute("app", GET, key)
    assert clock.monotonic() - start >= 1.0  # request_timeout, then the spare
    assert sorted(r.node for r in result.ok_replies) == sorted([prefs[0], prefs[2]])
    assert a.sync_status()["reads"] == {"speculative": 0, "retried": 1}


async def test_a_fast_quorum_cancels_the_speculation(
    harness: MemoryCluster, count_requests: RequestCounter, clock: FakeClock
) -> None:
    a, _, _ = await three(harness, read_speculate_after=0.05)
    key = key_headed_by(a)
    sent = count_requests(a)
    await a.execute("app", GET, key)
    await asyncio.sleep(0.2)  # fake time past the delay
    assert sum(sent.values()) == 1
    assert a.sync_status()["reads"]["speculative"] == 0


async def test_the_quorum_fails_when_too_few_replicas_answer(harness: MemoryCluster) -> None:
    a, _, _ = await three(harness)
    key = key_headed_by(a)
    prefs = a.preference_list(key, 3)
    for address in prefs[1:]:
        await harness.nodes[address].stop()
    with pytest.raises(QuorumNotReachedError) as info:
        await a.execute("app", GET, key)
    assert set(info.value.failures) <= set(prefs[1:])
    assert info.value.failures  # at least one named


async def test_a_read_sees_a_write_one_replica_missed(harness: MemoryCluster) -> None:
    """R + W > N: whichever two replicas a read asks, one holds the acknowledged write."""
    nodes = await three(harness)
    key = key_headed_by(nodes[0])
    prefs = nodes[0].preference_list(key, 3)
    await nodes[0].execute("app", PUT, key, versioned_payload(1, b"old"), quorum=3)
    for missed in prefs:
        # The write reaches a quorum while `missed` is cut off, then the cut heals.
        others = [p for p in prefs if p != missed]
        writer = harness.nodes[others[0]]
        for p in others:
            harness.network.cut(missed, p)
        version = 2 + prefs.index(missed)
        await writer.execute("app", PUT, key, versioned_payload(version, b"new"), quorum=2)
        harness.network.heal()
        for reader in nodes:
            result = await reader.execute("app", GET, key)
            newest = max(result.payloads)
            assert newest == versioned_payload(version, b"new"), (missed, reader.address)


async def test_execute_many_reads_ask_a_quorum_per_key(
    harness: MemoryCluster, count_requests: RequestCounter
) -> None:
    a, _, _ = await three(harness)
    keys = [f"m{i}".encode() for i in range(20)]
    for k in keys:
        await a.execute("app", PUT, k, versioned_payload(1, k), quorum=3)
    sent = count_requests(a)
    results = await a.execute_many("app", GET, [(k, b"") for k in keys])
    assert all(r.ok for r in results)
    for k, r in zip(keys, results, strict=True):
        assert len(r.replies) == 2
        assert r.payloads == [versioned_payload(1, k)] * 2
    assert sum(sent.values()) <= 2  # one batch per peer at most


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"read_fanout": "some"}, "read_fanout"),
        ({"read_speculate_after": 0.0}, "read_speculate_after"),
        ({"read_speculate_after": -1.0}, "read_speculate_after"),
    ],
)
def test_bad_read_settings_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        PeerRingConfig(**fields)  # type: ignore[arg-type]


def test_the_defaults() -> None:
    config = PeerRingConfig()
    assert config.read_fanout == "quorum"
    assert config.read_speculate_after == 0.05
    assert PeerRingConfig(read_speculate_after=None).read_speculate_after is None


async def test_the_extra_reads_are_exported_as_metrics(harness: MemoryCluster) -> None:
    pytest.importorskip("prometheus_client")
    from peer_ring.core.metrics import PeerRingCollector

    a, _, _ = await three(harness, read_speculate_after=0.05)
    key = key_headed_by(a)
    prefs = a.preference_list(key, 3)
    harness.network.pause(prefs[1])
    await a.execute("app", GET, key)  # one speculative read
    harness.network.resume(prefs[1])
    await harness.nodes[prefs[2]].stop()
    other = next(
        k
        for k in (f"o{i}".encode() for i in range(10_000))
        if k != key and a.preference_list(k, 3)[:2] == (a.address, prefs[2])
    )
    await a.execute("app", GET, other)  # prefs[2] is down: one retried read
    got = {s.name: s.value for f in PeerRingCollector(a).collect() for s in f.samples}
    assert got["peer_ring_reads_speculative_total"] == 1.0
    assert got["peer_ring_reads_retried_total"] == 1.0
