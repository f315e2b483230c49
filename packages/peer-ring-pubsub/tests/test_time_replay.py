"""Replay by time: ``read(start_time=...)`` and ``subscribe(..., start_time=...)``.

Pure tests of the binary search over a log's entry times, then an in-memory cluster whose
sequencer fails over to a node with a clock 60 s behind.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.core.testing.sim import SkewedClock
from peer_ring.pubsub import InvalidOptionError, OffsetOutOfRangeError
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._log import Ballot, Entry, PartitionLog
from peer_ring.pubsub._sequencer import adopt
from peer_ring.pubsub._wire import ring_key


def _log(times: list[float], gaps: set[int], first: int = 0) -> PartitionLog:
    log = PartitionLog(TopicConfig(max_messages=10**6))
    log.first = first
    for i, t in enumerate(times):
        seq = first + i
        if seq not in gaps:
            log.add(Entry(1, seq, t, "", b"", b"x"))
    return log


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.floats(0, 5, allow_nan=False), min_size=0, max_size=60),
    gaps=st.sets(st.integers(0, 60), max_size=10),
    when=st.floats(-1, 200, allow_nan=False),
    first=st.integers(0, 5),
)
def test_seek_time_finds_the_first_entry_at_or_after(
    steps: list[float], gaps: set[int], when: float, first: int
) -> None:
    times = []
    t = 100.0
    for step in steps:
        t += step  # non-decreasing, with equal times (step 0)
        times.append(t)
    log = _log(times, {first + g for g in gaps}, first)
    upto = log.last
    held = sorted(log.entries)
    expected = next((s for s in held if log.entries[s].time >= when), upto + 1)
    got = log.seek_time(when, upto)
    # Gaps before the answer are not messages: the answer is the gap's start at the
    # earliest, never past the first matching entry.
    assert got <= expected
    assert all(log.entries[s].time < when for s in held if s < got)
    # The commit point bounds the search.
    if held:
        mid = held[len(held) // 2]
        bounded = log.seek_time(when, mid)
        assert bounded <= mid + 1
        assert all(log.entries[s].time < when for s in held if s < bounded)


def test_seek_time_refuses_to_skip_what_retention_dropped() -> None:
    log = PartitionLog(TopicConfig(max_messages=3))
    for i in range(6):
        log.add(Entry(1, i, 100.0 + i, "", b"", b"x"))
        log.apply_retention(0.0)
    assert log.first == 3 and log.dropped_time == 102.0
    with pytest.raises(OffsetOutOfRangeError) as err:
        log.seek_time(101.5, log.last)  # 102 was dropped: replaying from 3 would skip it
    assert err.value.first == 3
    assert log.seek_time(102.5, log.last) == 3  # nothing at or after 102.5 was dropped
    assert log.seek_time(104.0, log.last) == 4
    assert log.seek_time(999.0, log.last) == 6  # the end


def test_a_takeover_fills_holes_without_breaking_time_order() -> None:
    log = _log([10.0, 11.0, 12.0, 13.0], gaps={0, 2})
    adopt(log, Ballot(5, "b"), 3, now=1.0)  # the new sequencer's clock is far behind
    times = [log.entries[s].time for s in range(4)]
    assert times == sorted(times) and times == [11.0, 11.0, 11.0, 13.0]


async def test_replay_by_time_and_a_failover_to_a_slow_clock(cluster) -> None:
    nodes = await cluster.start(3)
    addresses = list(cluster.members)
    publisher = nodes[0]
    topic = publisher.topic("events", partitions=2)
    for i in range(6):
        await topic.publish(f"a{i}".encode(), partition=i % 2)
    await cluster.clock.sleep(10.0)
    t1 = cluster.clock.time()
    for i in range(6):
        await topic.publish(f"b{i}".encode(), partition=i % 2)
    await cluster.clock.sleep(10.0)

    replay = [m.data async for m in topic.read(start_time=t1)]
    assert sorted(replay) == [f"b{i}".encode() for i in range(6)]
    as_datetime = datetime.fromtimestamp(t1, UTC)
    assert len([m async for m in topic.read(start_time=as_datetime)]) == 6
    future = as_datetime + timedelta(hours=1)
    assert [m async for m in topic.read(start_time=future)] == []

    # A broadcast subscriber and a new group start at the time; an existing group does not.
    async with topic.subscribe(group="old") as sub:
        first = await sub.next(timeout=30)
        assert first is not None and first.data.startswith(b"a")
        await first.ack()
    got: dict[str, list[bytes]] = {"bcast": [], "new": []}
    async with (
        topic.subscribe(start_time=t1) as bcast,
        topic.subscribe(group="new", start_time=t1) as new,
        topic.subscribe(group="old", start_time=t1) as old,
    ):
        for name, sub in (("bcast", bcast), ("new", new)):
            for _ in range(6):
                msg = await sub.next(timeout=30)
                assert msg is not None
                got[name].append(msg.data)
                if sub is new:
                    await msg.ack()
        msg = await old.next(timeout=30)
        assert msg is not None and msg.data.startswith(b"a"), "an existing group keeps its cursor"
        await msg.ack()
    assert sorted(got["bcast"]) == sorted(got["new"]) == [f"b{i}".encode() for i in range(6)]

    # The sequencer of partition 0 dies and comes back empty with a clock 60 s behind; it
    # takes over (the head of the list again) and stamps no message below the last one.
    victim = publisher.node.preference_list(ring_key("events", 0), 3)[0]
    reader = cluster.nodes[next(a for a in addresses if a != victim)]
    await cluster.kill(victim)
    cluster.set_members([a for a in addresses if a != victim])
    await cluster.until(lambda: victim not in reader.node.ring)
    cluster.clocks[victim] = SkewedClock(cluster.clock, skew=-60.0)
    restarted = await cluster.restart_empty(victim)
    cluster.set_members(addresses)
    await cluster.until(lambda: restarted.node.ready and victim in reader.node.ring)
    slow = reader.topic("events", partitions=2)
    for i in range(3):
        await slow.publish(f"c{i}".encode(), partition=0)
    await cluster.clock.sleep(5.0)
    t2 = cluster.clock.time()
    await slow.publish(b"d0", partition=0)
    assert restarted.leaders.leaders, "the slow node sequences partition 0 again"

    log = [m async for m in slow.read(start=0, partitions=[0])]
    times = [m.timestamp for m in log]
    assert times == sorted(times), "times never go back along the log"
    # The slow clock stamps c* and d0 with the last time it adopted (it is behind): a
    # replay from t1 still returns exactly the messages stamped at or after t1, and one
    # from t2 finds nothing on partition 0 (d0 carries a time < t2: the documented skew).
    from_t1 = [m.data async for m in slow.read(start_time=t1, partitions=[0])]
    assert from_t1 == [m.data for m in log if m.timestamp >= t1]
    assert from_t1[-4:] == [b"c0", b"c1", b"c2", b"d0"]
    assert [m async for m in slow.read(start_time=t2, partitions=[0])] == []


async def test_start_time_options_are_checked(cluster) -> None:
    (a,) = await cluster.start(1)
    topic = a.topic("checked", partitions=1)
    for bad in (-1.0, float("nan"), float("inf"), "yesterday", True, datetime(2026, 1, 1)):
        with pytest.raises(InvalidOptionError):
            topic.subscribe(start_time=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidOptionError):
            [m async for m in topic.read(start_time=bad)]  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError):
        topic.subscribe(start="latest", start_time=1.0)
    with pytest.raises(InvalidOptionError):
        [m async for m in topic.read(start=3, start_time=1.0)]
