"""Data movement driven by the core, with a minimal application (no KV store).

The application is a dict of ``key -> (version, value)`` with last-writer-wins merge and
the four data hooks, which is all the core needs: these tests check that the core's
mechanisms work for *any* application, on the in-memory network with a FakeClock.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from peer_ring.core import (
    Command,
    InvalidArgumentError,
    NotRunningError,
    PeerRing,
    PeerRingConfig,
    PeerUnavailableError,
    QuorumNotReachedError,
    RequestTimeoutError,
    Ring,
)
from peer_ring.core.testing import (
    FakeClock,
    FixedDiscovery,
    MemoryCluster,
    MemoryNetwork,
    fake_time_config,
    settle_loop,
    versioned_payload,
)

#: The partitions of ``harness`` (conftest.py: a MemoryCluster with ``fake_time_config()``).
P = fake_time_config().partitions
ADDRS = [f"127.0.0.{i}:7101" for i in range(1, 6)]
CONFIG = fake_time_config(P)

# Every test runs on the fake-time loop (tests/conftest.py): the cluster's clock is the
# loop's time, and waits for probes, suspicion, backoff and deadlines never sleep.
pytestmark = pytest.mark.fake_time


# -- registration and lifecycle ------------------------------------------------------------


async def test_register_validates_commands_and_reserves_the_internal_namespace(
    harness: MemoryCluster,
) -> None:
    node = await harness.start(ADDRS[0], ADDRS[:1])
    with pytest.raises(InvalidArgumentError, match="hinted=True requires mutates=True"):
        node.register("x", Command("y", hinted=True), lambda c, k, p: b"")
    with pytest.raises(InvalidArgumentError, match="reserved"):
        node.register("__peer_ring__", "ping", lambda c, k, p: b"")


async def test_a_single_node_is_ready_at_once(harness: MemoryCluster) -> None:
    node = await harness.start(ADDRS[0], ADDRS[:1])
    assert node.ready
    await node.wait_ready(timeout=0.1)
    status = node.sync_status()
    assert status["ready"] and status["partitions"]["pending"] == 0
    assert status["partitions"]["nothing_to_pull"] == P


async def test_without_data_hooks_there_is_nothing_to_pull(harness: MemoryCluster) -> None:
    node = await harness.start(ADDRS[0], ADDRS[:3], hooks=False)
    assert node.ready


async def test_wait_ready_times_out_on_the_node_clock(
    harness: MemoryCluster, clock: FakeClock
) -> None:
    # Two listed peers never start and down_after is off: the partitions wait for them
    # until sync_give_up_after.
    config = PeerRingConfig(partitions=P, down_after=None, sync_give_up_after=30.0)
    node = await harness.start(ADDRS[0], ADDRS[:3], config=config)
    waiter = asyncio.ensure_future(node.wait_ready(timeout=5.0))
    await harness.until(waiter.done, within=10.0)
    with pytest.raises(RequestTimeoutError, match="not ready after 5s"):
        await waiter
    await harness.until(lambda: node.ready, within=40.0)
    assert node.sync_status()["partitions"]["given_up"] > 0
    with pytest.raises(NotRunningError):
        await PeerRing(FixedDiscovery(ADDRS[4], ADDRS[4:]), config=config).wait_ready()


async def test_unreachable_listed_peers_are_declared_down_and_the_rest_becomes_ready(
    harness: MemoryCluster,
) -> None:
    nodes = [await harness.start(a, ADDRS[:5]) for a in ADDRS[:3]]  # two never start
    await harness.until(lambda: all(n.ready for n in nodes), within=10.0)
    for node in nodes:
        assert sorted(node.ring.members) == ADDRS[:3]
        assert node.sync_status()["membership"]["down"] == ADDRS[3:5]


# -- reads while a replica pulls -----------------------------------------------------------


async def test_a_pulling_replica_refuses_reads_and_the_previous_holder_answers(
    harness: MemoryCluster,
) -> None:
    a, b, c = await harness.start_ready(ADDRS[:3])
    for i in range(100):
        await a.execute("app", "put", f"k{i}", versioned_payload(1, b"v%d" % i), quorum=3)
    d = await harness.start(ADDRS[3], ADDRS[:4])

    async def never(partitions: list[int]) -> None:  # hold D's pulls: it stays pending
        # A round that never ends (one that returned at once would have the work loop
        # start the next at once, a busy loop in which fake time could never move).
        await asyncio.get_running_loop().create_future()

    d._sync._pull_round = never  # type: ignore[method-assign]
    for node in (a, b, c):
        harness.discoveries[node.address].set_members(ADDRS[:4])
    await settle_loop(60)
    assert all(len(n.ring) == 4 for n in (a, b, c, d))
    # a key whose new preference list includes D
    key = next(f"k{i}" for i in range(100) if d.address in a.preference_list(f"k{i}", 3)).encode()
    partition = a.ring.partition_for_key(key)
    assert not d.partition_ready(partition)
    # the replica holds the read a little (half its timeout), then refuses...
    refused = asyncio.ensure_future(a.call(d.address, "app", "get", key))
    await settle_loop(60)
    assert not refused.done()
    await harness.until(refused.done, within=1.0)
    with pytest.raises(PeerUnavailableError, match=f"partition {partition} is not ready"):
        await refused
    # ...and R=3 still succeeds: the previous holder answers in its place
    op = asyncio.ensure_future(a.execute("app", "get", key, quorum=3))
    await harness.until(op.done, within=2.0)
    result = op.result()
    assert d.address not in {r.node for r in result.ok_replies}
    answered = {r.node for r in result.ok_replies}
    assert len(answered) == 3 and all(r.payload[8:].startswith(b"v") for r in result.ok_replies)
    # the extra replica is the one D replaces (it keeps the partition until the handoff)
    assert answered - set(a.preference_list(key, 3))
    # writes are accepted while pulling
    await a.execute("app", "put", key, versioned_payload(2, b"new"), quorum=3)
    assert harness.apps[d.address].data[key] == (2, b"new")


async def test_a_node_whose_pending_partitions_go_to_a_joiner_becomes_ready(
    harness: MemoryCluster,
) -> None:
    # D joins and pulls; before it is done, E joins and takes over every partition D was
    # still pulling. D has nothing left to wait for: it must be ready at once, not stay
    # "not ready" (readyz red, a rollout stuck) until some later pull finishes. Fails with
    # the re-check of readiness removed from PartitionTable.ring_changed.
    a, b, c = await harness.start_ready(ADDRS[:3])
    for i in range(60):
        await a.execute("app", "put", f"k{i}", versioned_payload(1, b"v"), quorum=3)
    four = ADDRS[:4]
    d_now = Ring.build(four, P).partitions_of(ADDRS[3], 3)
    joiner, d_later = next(
        (e, later)
        for e in (f"127.0.1.{i}:7101" for i in range(1, 250))
        if (later := Ring.build([*four, e], P).partitions_of(ADDRS[3], 3)) < d_now
    )
    d = await harness.start(ADDRS[3], four)
    pull_round = d._sync._pull_round

    async def only_kept(partitions: list[int]) -> None:
        # Pull what D keeps after E joins; hold the rest forever (a slow transfer).
        await pull_round([p for p in partitions if p in d_later])
        if set(partitions) - d_later:
            await asyncio.get_running_loop().create_future()

    d._sync._pull_round = only_kept  # type: ignore[method-assign]
    for node in (a, b, c):
        harness.discoveries[node.address].set_members(four)
    await harness.until(lambda: d.sync_status()["partitions"]["pending"] == len(d_now - d_later))
    assert not d.ready
    await harness.start(joiner, [*four, joiner])
    for address in four:
        harness.discoveries[address].set_members([*four, joiner])
    await harness.until(lambda: len(d.ring) == 5, within=5.0)
    assert d.ring.partitions_of(d.address, 3) == d_later
    await harness.until(lambda: d.ready, within=5.0)
    assert d.sync_status()["partitions"]["pending"] == 0
    await d.wait_ready(timeout=0.1)


# -- failure detector, re-replication ------------------------------------------------------


async def test_a_crashed_node_is_removed_after_down_after_and_re_added_when_back(
    harness: MemoryCluster,
) -> None:
    nodes = [await harness.start(a, ADDRS[:4]) for a in ADDRS[:4]]
    await harness.until(lambda: all(n.ready for n in nodes))
    for i in range(100):
        await nodes[0].execute("app", "put", f"k{i}", versioned_payload(1, b"x"), quorum=3)
    victim = nodes[3]
    await victim.stop()
    start = harness.clock.monotonic()
    await harness.until(lambda: all(victim.address not in n.ring for n in nodes[:3]))
    assert 3.0 <= harness.clock.monotonic() - start <= 5.0
    # every key has N=3 copies on the three survivors again
    await harness.until(
        lambda: all(n.sync_status()["partitions"]["pending"] == 0 for n in nodes[:3])
    )
    for i in range(100):
        assert all(f"k{i}".encode() in harness.apps[n.address].data for n in nodes[:3])
    back = await harness.start(victim.address, ADDRS[:4])
    await harness.until(lambda: all(len(n.ring) == 4 for n in nodes[:3]) and back.ready)
    await harness.until(
        lambda: all(not n.sync_status()["partitions"]["held_for_handoff"] for n in nodes[:3])
    )
    for i in range(100):
        key = f"k{i}".encode()
        holders = {
            a for a, app in harness.apps.items() if key in app.data and harness.nodes[a].running
        }
        assert holders == set(back.preference_list(key, 3))


# -- sloppy quorum --------------------------------------------------------------------------


async def test_writes_to_suspected_replicas_go_to_substitutes_with_a_hint(
    harness: MemoryCluster, network: MemoryNetwork
) -> None:
    nodes = [await harness.start(a, ADDRS[:5]) for a in ADDRS[:5]]
    await harness.until(lambda: all(n.ready for n in nodes))
    a = nodes[0]
    key = next(f"k{i}" for i in range(500) if a.preference_list(f"k{i}", 3)[0] == a.address)
    _, y, z = a.preference_list(key, 3)
    network.cut(a.address, y)
    network.cut(a.address, z)
    result = await a.execute("app", "put", key, versioned_payload(7, b"h"), quorum=3)
    substitutes = {r.node for r in result.ok_replies} - {a.address}
    assert len(substitutes) == 2 and not substitutes & {y, z}
    # the substitutes hold hints for y and z, not data
    pending: dict[str, int] = {}
    for s in substitutes:
        assert key.encode() not in harness.apps[s].data
        for target, count in harness.nodes[s].sync_status()["hints"]["pending"].items():
            pending[target] = pending.get(target, 0) + count
    assert pending == {y: 1, z: 1}
    network.heal()
    await harness.until(
        lambda: all(harness.apps[r].data.get(key.encode()) == (7, b"h") for r in (y, z))
    )
    # a read/other command is never hinted
    with pytest.raises(QuorumNotReachedError):
        network.cut(a.address, y)
        network.cut(a.address, z)
        await a.execute("app", "get", key, quorum=2)


async def test_a_full_hint_store_refuses_and_the_coordinator_does_not_count_it(
    harness: MemoryCluster, network: MemoryNetwork
) -> None:
    # Error path: the substitutes' hint stores are full (hint_max=1, already holding one
    # hint each), so they answer OVERLOADED; the write must not reach W=3 through them.
    config = dataclasses.replace(CONFIG, hint_max=1)
    nodes = [await harness.start(a, ADDRS[:5], config=config) for a in ADDRS[:5]]
    await harness.until(lambda: all(n.ready for n in nodes))
    a = nodes[0]
    mine = [f"k{i}" for i in range(2000) if a.preference_list(f"k{i}", 3)[0] == a.address]
    _, y, z = a.preference_list(mine[0], 3)
    same = [k for k in mine if list(a.preference_list(k, 3)[1:]) == [y, z]]
    first, second = same[0], same[1]
    network.cut(a.address, y)
    network.cut(a.address, z)
    result = await a.execute("app", "put", first, versioned_payload(1, b"one"), quorum=3)
    substitutes = {r.node for r in result.ok_replies} - {a.address}
    assert len(substitutes) == 2  # each now holds its one hint
    with pytest.raises(QuorumNotReachedError, match="full"):
        await a.execute("app", "put", second, versioned_payload(1, b"two"), quorum=3)
    for s in substitutes:
        assert sum(harness.nodes[s].sync_status()["hints"]["pending"].values()) == 1
    # The coordinator's own copy was written; nothing else was lost or corrupted.
    assert harness.apps[a.address].data[second.encode()] == (1, b"two")
    network.heal()
    await harness.until(
        lambda: all(harness.apps[r].data.get(first.encode()) == (1, b"one") for r in (y, z))
    )


async def test_a_hint_its_target_keeps_refusing_is_dropped_after_max_refusals(
    harness: MemoryCluster, network: MemoryNetwork
) -> None:
    # Error path: y is back but its handler refuses the hinted write every time (an error
    # answer, not an unreachable peer): the substitute drops that hint after max_refusals
    # instead of retrying forever; z's hint is delivered as usual.
    nodes = [await harness.start(a, ADDRS[:5]) for a in ADDRS[:5]]
    await harness.until(lambda: all(n.ready for n in nodes))
    a = nodes[0]
    key = next(f"k{i}" for i in range(500) if a.preference_list(f"k{i}", 3)[0] == a.address)
    _, y, z = a.preference_list(key, 3)
    network.cut(a.address, y)
    network.cut(a.address, z)
    result = await a.execute("app", "put", key, versioned_payload(5, b"r"), quorum=3)
    substitutes = {r.node for r in result.ok_replies} - {a.address}

    def refuse(key: bytes, version: int, value: bytes) -> None:
        raise ValueError("refused on purpose")

    harness.apps[y].merge = refuse  # type: ignore[method-assign]
    network.heal()

    def hints_settled() -> bool:
        return all(not harness.nodes[s].sync_status()["hints"]["pending"] for s in substitutes)

    await harness.until(hints_settled, within=120.0)
    dropped = sum(harness.nodes[s].sync_status()["hints"]["dropped_refused"] for s in substitutes)
    assert dropped == 1
    assert harness.apps[z].data[key.encode()] == (5, b"r")
    assert key.encode() not in harness.apps[y].data


async def test_a_hint_whose_target_left_the_ring_is_redirected_to_the_current_replicas(
    harness: MemoryCluster, network: MemoryNetwork
) -> None:
    nodes = [await harness.start(a, ADDRS[:5]) for a in ADDRS[:5]]
    await harness.until(lambda: all(n.ready for n in nodes))
    a = nodes[0]
    key = next(f"k{i}" for i in range(500) if a.preference_list(f"k{i}", 3)[0] == a.address)
    _, y, _ = a.preference_list(key, 3)
    network.cut(a.address, y)
    await a.execute("app", "put", key, versioned_payload(9, b"r"), quorum=3)
    await harness.nodes[y].stop()  # y never comes back: it is declared down
    network.heal()
    await harness.until(
        lambda: all(n.sync_status()["hints"]["pending_total"] == 0 for n in nodes if n.running)
    )
    for replica in a.preference_list(key, 3):
        assert harness.apps[replica].data[key.encode()] == (9, b"r")


# -- graceful leave -------------------------------------------------------------------------


async def test_leave_of_the_last_node_and_leave_when_not_running(harness: MemoryCluster) -> None:
    node = await harness.start(ADDRS[0], ADDRS[:1])
    report = await node.leave(deadline=1.0)
    assert report.complete and report.acknowledged == ()
    assert not node.running
    with pytest.raises(NotRunningError):
        await node.leave()


async def test_leave_reports_peers_that_did_not_acknowledge(
    harness: MemoryCluster, network: MemoryNetwork
) -> None:
    nodes = await harness.start_ready(ADDRS[:3])
    leaver = nodes[2]
    network.pause(nodes[1].address)  # never answers: the leave hits its deadline
    task = asyncio.ensure_future(leaver.leave(deadline=2.0))
    await harness.until(task.done, within=5.0)
    report = task.result()
    assert not report.complete
    assert set(report.failed) == {nodes[1].address}
    assert report.acknowledged == (nodes[0].address,)
    assert leaver.sync_status()["leave"]["state"] == "left"


async def test_a_node_object_can_be_stopped_and_started_again(harness: MemoryCluster) -> None:
    nodes = await harness.start_ready(ADDRS[:3])
    await nodes[2].stop()
    await nodes[2].start()
    assert not nodes[2].ready  # it pulls again: its data may be stale
    await harness.until(lambda: nodes[2].ready)
    assert nodes[2].sync_status()["partitions"]["pending"] == 0
