"""Error paths of data movement, driven on the in-memory network with a FakeClock.

Each test injects one failure (an export that breaks mid-stream, a digest that errors, a
partition or a paused peer) and checks what the node does about it: the pull retries or
moves to another holder, the anti-entropy round goes on, the quorum error names the
replicas, the coordinator's own pulling copy is skipped. The cluster and its application
(a versioned LWW dict) are ``MemoryCluster`` and ``VersionedDict`` of
``peer_ring.core.testing``, as in ``test_sync_cluster.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Collection, Iterable, Sequence

import pytest

from peer_ring.core import (
    PeerRing,
    QuorumNotReachedError,
    Ring,
    partition_for_key,
)
from peer_ring.core.testing import (
    MemoryCluster,
    MemoryNetwork,
    VersionedDict,
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


async def _joined_fourth(h: MemoryCluster, keys: int = 60) -> tuple[list[PeerRing], PeerRing]:
    """Three ready nodes holding ``keys`` keys at N=3, then a fourth that joins them."""
    nodes = await h.start_ready(ADDRS[:3])
    for i in range(keys):
        await nodes[0].execute("app", "put", f"k{i}", versioned_payload(1, b"v%d" % i), quorum=3)
    d = await h.start(ADDRS[3], ADDRS[:4])
    for node in nodes:
        h.discoveries[node.address].set_members(ADDRS[:4])
    return nodes, d


def _break_export(app: VersionedDict, failing: Callable[[], bool], after: int = 1) -> list[int]:
    """Make ``app``'s export raise after ``after`` records while ``failing()`` holds: a
    transfer that breaks mid-stream. Returns the list the failures are counted in."""
    calls: list[int] = []
    original = app.export_partition

    def export(partition: int, buckets: Collection[int] | None = None) -> Iterable[bytes]:
        for n, record in enumerate(original(partition, buckets)):
            if n == after and failing():
                calls.append(partition)
                raise ValueError("export broke on purpose")
            yield record

    app.export_partition = export  # type: ignore[method-assign]
    return calls


def _expected(h: MemoryCluster, d: PeerRing, keys: int) -> dict[bytes, tuple[int, bytes]]:
    return {
        f"k{i}".encode(): (1, b"v%d" % i)
        for i in range(keys)
        if d.address in d.preference_list(f"k{i}", 3)
    }


async def test_a_transfer_breaking_mid_pull_completes_from_another_holder(
    harness: MemoryCluster,
) -> None:
    # Error path: one holder's transfer breaks after its first record, every time. The
    # joiner must not count that partial copy as a complete pull: it takes the partition
    # from another holder and ends ready with every key it replicates.
    _, d = await _joined_fourth(harness)
    failed = _break_export(harness.apps[ADDRS[1]], lambda: True)
    await harness.until(lambda: d.ready and len(d.ring) == 4, within=60.0)
    assert failed, "the broken holder was never asked (the test drove nothing)"
    expected = _expected(harness, d, 60)
    assert expected and {k: harness.apps[d.address].data.get(k) for k in expected} == expected


async def test_a_pull_failing_on_every_holder_stays_pending_then_completes(
    harness: MemoryCluster,
) -> None:
    # Error path: every holder's transfer breaks mid-stream. The partitions stay pending
    # (the node is not ready, its reads go elsewhere) and the pull is retried with backoff;
    # once the holders recover, the retry completes and the node becomes ready.
    nodes, d = await _joined_fourth(harness)
    broken = True
    counts = [_break_export(harness.apps[n.address], lambda: broken) for n in nodes]
    await harness.until(lambda: len(d.ring) == 4 and sum(map(len, counts)) >= 6, within=60.0)
    await harness.until(lambda: sum(map(len, counts)) >= 20, within=60.0)  # several retries
    assert not d.ready
    assert d.sync_status()["partitions"]["pending"]
    broken = False
    await harness.until(lambda: d.ready, within=60.0)
    expected = _expected(harness, d, 60)
    assert {k: harness.apps[d.address].data.get(k) for k in expected} == expected


async def test_an_anti_entropy_peer_failing_its_digests_does_not_stop_the_rounds(
    harness: MemoryCluster,
) -> None:
    # Error path: one replica answers every digest request with an error. The rounds go on
    # (counted), and the divergent key is still repaired from the healthy replica.
    config = dataclasses.replace(CONFIG, anti_entropy_interval=2.0, anti_entropy_batch=P)
    nodes = [await harness.start(a, ADDRS[:3], config=config) for a in ADDRS[:3]]
    await harness.until(lambda: all(n.ready for n in nodes))
    a, b, c = nodes
    harness.apps[a.address].data[b"only-on-a"] = (7, b"x")  # a write only a saw

    def refuse(partition: int) -> Sequence[bytes]:
        raise ValueError("digest broke on purpose")

    harness.apps[b.address].digest_partition = refuse  # type: ignore[method-assign]
    await harness.until(
        lambda: harness.apps[c.address].data.get(b"only-on-a") == (7, b"x"), within=120.0
    )
    rounds = c.sync_status()["anti_entropy"]["rounds"]
    await harness.until(lambda: c.sync_status()["anti_entropy"]["rounds"] >= rounds + 3)
    assert c.running and c.ready


async def test_no_substitute_for_the_sloppy_quorum_names_the_replicas(
    harness: MemoryCluster, network: MemoryNetwork
) -> None:
    # Error path: N=3 on a three-node ring with two replicas cut off: there is no node
    # outside the preference list to take a hint, so W=3 fails and says which replicas.
    a, b, c = await harness.start_ready(ADDRS[:3])
    network.cut(a.address, b.address)
    network.cut(a.address, c.address)
    with pytest.raises(QuorumNotReachedError) as info:
        await a.execute("app", "put", "k", versioned_payload(1, b"v"), quorum=3)
    err = info.value
    assert err.quorum == 3
    assert err.succeeded == [a.address]
    # the coordinator gives up as soon as W=3 is out of reach: the failed replicas it saw
    assert err.failures and set(err.failures) <= {b.address, c.address}
    assert all(node in str(err) for node in err.failures)
    assert harness.apps[a.address].data[b"k"] == (1, b"v")  # its own copy is written


async def test_the_coordinators_own_pulling_replica_is_skipped_for_reads(
    harness: MemoryCluster,
) -> None:
    # Error path: the coordinator is itself a replica still pulling the partition: it does
    # not answer the read from its incomplete copy but forwards to the previous holder.
    a, b, c = await harness.start_ready(ADDRS[:3])
    for i in range(100):
        await a.execute("app", "put", f"k{i}", versioned_payload(1, b"v%d" % i), quorum=3)
    d = await harness.start(ADDRS[3], ADDRS[:4])

    async def never(partitions: list[int]) -> None:  # D's pulls never end: it stays pending
        await asyncio.get_running_loop().create_future()

    d._sync._pull_round = never  # type: ignore[method-assign]
    for node in (a, b, c):
        harness.discoveries[node.address].set_members(ADDRS[:4])
    await settle_loop(60)
    await harness.until(lambda: all(len(n.ring) == 4 for n in (a, b, c, d)))
    key = next(f"k{i}" for i in range(100) if d.address in d.preference_list(f"k{i}", 3))
    assert not d.partition_ready(d.partition_for_key(key.encode()))
    op = asyncio.ensure_future(d.execute("app", "get", key, quorum=2))
    await harness.until(op.done, within=5.0)
    result = op.result()
    answered = {r.node for r in result.ok_replies}
    assert d.address not in answered and len(answered) >= 2
    assert all(r.payload[8:] == b"v" + key[1:].encode() for r in result.ok_replies)


async def test_a_failed_handoff_keeps_the_partition_until_a_retry_succeeds(
    harness: MemoryCluster,
) -> None:
    # Error path: a node that lost a partition to a joiner hands it off, but its transfer
    # breaks mid-stream, so the joiner does not confirm. The old holder must keep the
    # partition (its copy has a record nobody else has) and retry; once the transfer
    # works, the joiner has the record and the old holder drops the partition.
    a, b, c = await harness.start_ready(ADDRS[:3])
    for i in range(60):
        await a.execute("app", "put", f"k{i}", versioned_payload(1, b"v%d" % i), quorum=3)
    after = Ring(ADDRS[:4], partitions=P)
    key, holder = next(
        (f"k{i}".encode(), x)
        for i in range(60)
        for x in ADDRS[:3]
        if x not in after.preference_list(after.partition_for_key(f"k{i}".encode()), 3)
    )
    partition = partition_for_key(key, P)
    only = next(
        f"only{i}".encode()
        for i in range(10_000)
        if partition_for_key(f"only{i}".encode(), P) == partition
    )
    harness.apps[holder].data[only] = (9, b"only on the old holder")
    broken = True
    # the differing bucket holds only that record: break before it is sent
    failed = _break_export(harness.apps[holder], lambda: broken, after=0)
    d = await harness.start(ADDRS[3], ADDRS[:4])
    for node in (a, b, c):
        harness.discoveries[node.address].set_members(ADDRS[:4])
    await harness.until(lambda: d.ready and all(len(n.ring) == 4 for n in (a, b, c, d)))
    await harness.until(lambda: len(failed) >= 3, within=60.0)  # handoffs tried and broken
    assert holder not in d.preference_list(key, 3)
    # let the handoff rounds run (and fail) for 30 s of fake time
    t0 = harness.clock.monotonic()
    await harness.until(lambda: harness.clock.monotonic() >= t0 + 30.0, within=40.0)
    status = harness.nodes[holder].sync_status()["partitions"]
    assert status["held_for_handoff"] >= 1  # identical partitions went; this one stays
    assert harness.apps[holder].data[only] == (9, b"only on the old holder")
    assert only not in harness.apps[d.address].data
    broken = False
    await harness.until(lambda: only not in harness.apps[holder].data, within=120.0)
    assert harness.apps[d.address].data[only] == (9, b"only on the old holder")


async def test_a_leave_with_a_peer_that_never_confirms_returns_at_the_deadline(
    harness: MemoryCluster, network: MemoryNetwork
) -> None:
    # Error path: four nodes at N=3, one leaves while a peer that gains partitions from it
    # never answers. The leave returns at its deadline (fake time), and the report says
    # which peer failed and how many partitions it had not confirmed.
    nodes = [await harness.start(a, ADDRS[:4]) for a in ADDRS[:4]]
    await harness.until(lambda: all(n.ready for n in nodes))
    leaver, silent = nodes[3], nodes[1]
    network.pause(silent.address)
    started = harness.clock.monotonic()
    task = asyncio.ensure_future(leaver.leave(deadline=3.0))
    await harness.until(task.done, within=10.0)
    report = task.result()
    assert harness.clock.monotonic() - started <= 3.5
    assert not report.complete
    assert set(report.failed) == {silent.address}
    assert report.not_handed_off.get(silent.address, 0) > 0
    assert set(report.acknowledged) == {nodes[0].address, nodes[2].address}
