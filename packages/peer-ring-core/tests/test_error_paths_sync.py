"""Error paths of data movement, driven on the in-memory network with a FakeClock.

Each test injects one failure (an export that breaks mid-stream, a digest that errors, a
partition or a paused peer) and checks what the node does about it: the pull retries or
moves to another holder, the anti-entropy round goes on, the quorum error names the
replicas, the coordinator's own pulling copy is skipped. The application is the same
versioned LWW dict as in ``test_sync_cluster.py`` (copied: test modules cannot import
each other under ``--import-mode=importlib``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence

import pytest

from peer_ring.core import (
    DIGEST_BUCKETS,
    Command,
    CommandContext,
    PeerRing,
    PeerRingConfig,
    QuorumNotReachedError,
    Ring,
    bucket_for_key,
    fingerprint64,
    partition_for_key,
)
from peer_ring.core.testing import (
    FakeClock,
    FixedDiscovery,
    MemoryNetwork,
    current_clock,
    settle_loop,
)

P = 32
ADDRS = [f"127.0.0.{i}:7101" for i in range(1, 6)]
CONFIG = PeerRingConfig(
    partitions=P,
    request_timeout=1.0,
    probe_interval=0.5,
    probe_timeout=0.5,
    suspicion_timeout=2.0,
    down_after=3.0,
    handoff_delay=0.5,
    sync_retry_initial=0.2,
    sync_retry_max=1.0,
    sync_give_up_after=20.0,
    anti_entropy_interval=None,
)

_REC = struct.Struct(">QH")  # version, key length


class App:
    """A versioned dict with LWW merge: the application under test."""

    def __init__(self) -> None:
        self.data: dict[bytes, tuple[int, bytes]] = {}

    # commands ---------------------------------------------------------------------------

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        version = int.from_bytes(payload[:8], "big")
        self.merge(key, version, payload[8:])
        return b""

    def get(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        found = self.data.get(key)
        if found is None:
            return b""
        return found[0].to_bytes(8, "big") + found[1]

    def merge(self, key: bytes, version: int, value: bytes) -> None:
        current = self.data.get(key)
        if current is None or current[0] < version:
            self.data[key] = (version, value)

    # DataHooks --------------------------------------------------------------------------

    def export_partition(
        self, partition: int, buckets: Collection[int] | None = None
    ) -> Iterable[bytes]:
        for key, (version, value) in list(self.data.items()):
            if partition_for_key(key, P) != partition:
                continue
            if buckets is not None and bucket_for_key(key) not in buckets:
                continue
            yield _REC.pack(version, len(key)) + key + value

    def apply_records(self, partition: int, records: Sequence[bytes]) -> None:
        for record in records:
            version, size = _REC.unpack_from(record)
            key = record[_REC.size : _REC.size + size]
            self.merge(key, version, record[_REC.size + size :])

    def drop_partition(self, partition: int) -> None:
        for key in [k for k in self.data if partition_for_key(k, P) == partition]:
            del self.data[key]

    def digest_partition(self, partition: int) -> Sequence[bytes]:
        sums = [0] * DIGEST_BUCKETS
        for key, (version, _) in self.data.items():
            if partition_for_key(key, P) == partition:
                b = bucket_for_key(key)
                sums[b] = (sums[b] + fingerprint64(key + version.to_bytes(8, "big"))) % 2**64
        return [s.to_bytes(8, "big") if s else b"" for s in sums]


def put_payload(version: int, value: bytes) -> bytes:
    return version.to_bytes(8, "big") + value


class Harness:
    def __init__(self, clock: FakeClock, network: MemoryNetwork) -> None:
        self.clock = clock
        self.network = network
        self.nodes: dict[str, PeerRing] = {}
        self.apps: dict[str, App] = {}
        self.discoveries: dict[str, FixedDiscovery] = {}

    async def start(
        self,
        address: str,
        peers: list[str],
        config: PeerRingConfig = CONFIG,
        hooks: bool = True,
    ) -> PeerRing:
        discovery = FixedDiscovery(address, peers)
        node = PeerRing(
            discovery, config=config, transport=self.network.transport(address), clock=self.clock
        )
        app = App()
        node.register("app", Command("put", mutates=True), app.put)
        node.register("app", Command("get", reads=True), app.get)
        if hooks:
            node.register_hooks("app", app)
        await node.start()
        self.nodes[address] = node
        self.apps[address] = app
        self.discoveries[address] = discovery
        return node

    async def until(self, predicate: Callable[[], bool], within: float = 60.0) -> None:
        """Let time run until ``predicate`` holds: the loop jumps the fake clock whenever
        every task waits, so this takes no real time, and the predicate is checked at
        least every 0.05 s of fake time."""
        deadline = self.clock.monotonic() + within
        while not predicate():
            assert self.clock.monotonic() < deadline, (
                f"condition not met within {within}s of fake time"
            )
            await asyncio.sleep(0.05)

    async def stop_all(self) -> None:
        for node in self.nodes.values():
            await node.stop()


# Every test runs on the fake-time loop (tests/conftest.py): the cluster's clock is the
# loop's time, and waits for probes, suspicion, backoff and deadlines never sleep.
pytestmark = pytest.mark.fake_time


@pytest.fixture
async def clock() -> FakeClock:
    return current_clock()


@pytest.fixture
def network(clock: FakeClock) -> MemoryNetwork:
    return MemoryNetwork(clock)


@pytest.fixture
async def harness(clock: FakeClock, network: MemoryNetwork) -> AsyncIterator[Harness]:
    h = Harness(clock, network)
    yield h
    await h.stop_all()


async def three(h: Harness) -> list[PeerRing]:
    nodes = [await h.start(a, ADDRS[:3]) for a in ADDRS[:3]]
    await h.until(lambda: all(n.ready for n in nodes))
    return nodes


async def _joined_fourth(h: Harness, keys: int = 60) -> tuple[list[PeerRing], PeerRing]:
    """Three ready nodes holding ``keys`` keys at N=3, then a fourth that joins them."""
    nodes = await three(h)
    for i in range(keys):
        await nodes[0].execute("app", "put", f"k{i}", put_payload(1, b"v%d" % i), quorum=3)
    d = await h.start(ADDRS[3], ADDRS[:4])
    for node in nodes:
        h.discoveries[node.address].set_members(ADDRS[:4])
    return nodes, d


def _break_export(app: App, failing: Callable[[], bool], after: int = 1) -> list[int]:
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


def _expected(h: Harness, d: PeerRing, keys: int) -> dict[bytes, tuple[int, bytes]]:
    return {
        f"k{i}".encode(): (1, b"v%d" % i)
        for i in range(keys)
        if d.address in d.preference_list(f"k{i}", 3)
    }


async def test_a_transfer_breaking_mid_pull_completes_from_another_holder(
    harness: Harness,
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
    harness: Harness,
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
    harness: Harness,
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
    harness: Harness, network: MemoryNetwork
) -> None:
    # Error path: N=3 on a three-node ring with two replicas cut off: there is no node
    # outside the preference list to take a hint, so W=3 fails and says which replicas.
    a, b, c = await three(harness)
    network.cut(a.address, b.address)
    network.cut(a.address, c.address)
    with pytest.raises(QuorumNotReachedError) as info:
        await a.execute("app", "put", "k", put_payload(1, b"v"), quorum=3)
    err = info.value
    assert err.quorum == 3
    assert err.succeeded == [a.address]
    # the coordinator gives up as soon as W=3 is out of reach: the failed replicas it saw
    assert err.failures and set(err.failures) <= {b.address, c.address}
    assert all(node in str(err) for node in err.failures)
    assert harness.apps[a.address].data[b"k"] == (1, b"v")  # its own copy is written


async def test_the_coordinators_own_pulling_replica_is_skipped_for_reads(
    harness: Harness,
) -> None:
    # Error path: the coordinator is itself a replica still pulling the partition: it does
    # not answer the read from its incomplete copy but forwards to the previous holder.
    a, b, c = await three(harness)
    for i in range(100):
        await a.execute("app", "put", f"k{i}", put_payload(1, b"v%d" % i), quorum=3)
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
    harness: Harness,
) -> None:
    # Error path: a node that lost a partition to a joiner hands it off, but its transfer
    # breaks mid-stream, so the joiner does not confirm. The old holder must keep the
    # partition (its copy has a record nobody else has) and retry; once the transfer
    # works, the joiner has the record and the old holder drops the partition.
    a, b, c = await three(harness)
    for i in range(60):
        await a.execute("app", "put", f"k{i}", put_payload(1, b"v%d" % i), quorum=3)
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
    harness: Harness, network: MemoryNetwork
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
