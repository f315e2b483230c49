"""Active expiry: sampling frees expired keys without reads, with bounded work per step."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.core.testing import FakeClock
from peer_ring.kv._engine import KVEngine
from peer_ring.kv._expiry import MAX_ROUNDS, TTLIndex, run_active_expiry
from peer_ring.kv._record import Record
from peer_ring.kv._versions import Version

START = 1_700_000_000.0


def v(n: int) -> Version:
    return Version(int(START * 1_000_000) + n, 0, "n1")


class CountingTTLIndex(TTLIndex):
    """Counts sampling rounds, to observe how much work a step does."""

    __slots__ = ("rounds",)

    def __init__(self) -> None:
        super().__init__()
        self.rounds = 0

    def sample(self, rng: random.Random, count: int) -> list[tuple[int, bytes]]:
        self.rounds += 1
        return super().sample(rng, count)


def make(
    ttl_keys: int, plain_keys: int, ttl: float
) -> tuple[KVEngine, FakeClock, CountingTTLIndex]:
    clock = FakeClock(START)
    engine = KVEngine(16, clock, rng=random.Random(7))
    index = CountingTTLIndex()
    engine._ttl = index  # observe the engine's own index
    for i in range(ttl_keys):
        engine.put(b"ttl-%d" % i, Record(b"v", v(i), START + ttl))
    for i in range(plain_keys):
        engine.put(b"plain-%d" % i, Record(b"v", v(i)))
    return engine, clock, index


# ----------------------------------------------------------------------- TTLIndex


@settings(deadline=None)
@given(st.lists(st.integers(0, 30), max_size=80), st.data())
def test_ttl_index_sample_and_remove(numbers: list[int], data: st.DataObject) -> None:
    index = TTLIndex()
    keys = [b"%d" % n for n in numbers]
    for key in keys:
        index.add(key)
    assert len(index) == len(keys)
    assert index.sample(random.Random(0), len(keys)) == list(enumerate(keys))
    count = data.draw(st.integers(1, 10))
    sample = index.sample(random.Random(data.draw(st.integers(0, 99))), count)
    assert len(sample) <= count
    assert len({position for position, _ in sample}) == len(sample)  # distinct entries
    assert all(keys[position] == key for position, key in sample)
    removed = [position for position, _ in sample]
    index.remove(removed)
    remaining = [key for i, key in enumerate(keys) if i not in set(removed)]
    assert sorted(key for _, key in index.sample(random.Random(0), len(keys))) == sorted(remaining)


def test_ttl_index_compact_keeps_one_entry_per_wanted_key() -> None:
    index = TTLIndex()
    for key in [b"a", b"b", b"a", b"c", b"b", b"a"]:
        index.add(key)
    index.compact(lambda key: key != b"c")
    assert index.sample(random.Random(0), 10) == [(0, b"a"), (1, b"b")]
    index.clear()
    assert len(index) == 0 and index.sample(random.Random(0), 5) == []


# ----------------------------------------------------------------------- expire_step


def test_expired_keys_are_freed_without_reads() -> None:
    engine, clock, _ = make(ttl_keys=1000, plain_keys=500, ttl=10.0)
    assert engine.expire_step() == 0  # nothing expired yet
    clock.advance(10.0)
    steps = 0
    while engine.ttl_keys:
        freed = engine.expire_step()
        assert 0 <= freed <= MAX_ROUNDS * 20  # bounded work per call
        steps += 1
        assert steps < 100
    assert engine.expired == 1000
    assert len(engine) == 500  # the keys without a TTL are untouched
    assert engine.tombstones == 1000  # versions kept until the grace period ends
    assert all(engine.get(b"plain-%d" % i) is not None for i in range(500))


def test_a_step_stops_early_when_few_keys_expired() -> None:
    engine, _, index = make(ttl_keys=1000, plain_keys=0, ttl=60.0)
    index.rounds = 0
    assert engine.expire_step() == 0
    assert index.rounds == 1  # 0% of the sample expired: one round only


def test_a_step_repeats_while_most_sampled_keys_expired() -> None:
    engine, clock, index = make(ttl_keys=1000, plain_keys=0, ttl=1.0)
    clock.advance(2.0)
    index.rounds = 0
    freed = engine.expire_step()
    assert index.rounds == MAX_ROUNDS  # every round was all-expired: stop at the bound
    assert freed > 20 * MAX_ROUNDS // 2
    assert engine.expired == freed


def test_small_index_is_fully_checked_in_one_step() -> None:
    engine, clock, _ = make(ttl_keys=15, plain_keys=0, ttl=1.0)
    clock.advance(1.0)
    assert engine.expire_step() == 15
    assert engine.ttl_keys == 0


def test_expire_step_collects_tombstones() -> None:
    clock = FakeClock(START)
    engine = KVEngine(4, clock, tombstone_grace=5.0)
    engine.delete(b"d", v(0))
    engine.put(b"t", Record(b"v", v(0), START + 1.0))
    clock.advance(2.0)
    assert engine.expire_step() == 1
    assert engine.tombstones == 2
    clock.advance(10.0)
    engine.expire_step()
    assert (engine.stored, engine.collected, engine.size_bytes) == (0, 2, 0)


def test_rewritten_key_is_not_expired_by_its_old_ttl() -> None:
    engine, clock, _ = make(ttl_keys=1, plain_keys=0, ttl=1.0)
    engine.put(b"ttl-0", Record(b"new", v(10)))  # rewritten without a TTL
    clock.advance(5.0)
    assert engine.expire_step() == 0
    assert engine.get(b"ttl-0") == Record(b"new", v(10))


ttl_ops = st.lists(
    st.tuples(
        st.sampled_from(["ttl", "plain", "delete", "drop"]),
        st.integers(0, 40),
        st.floats(0.5, 30.0),
    ),
    max_size=80,
)


@settings(deadline=None, max_examples=40)
@given(ttl_ops)
def test_ttl_count_stays_exact_and_every_expired_key_is_found(
    ops: list[tuple[str, int, float]],
) -> None:
    clock = FakeClock(START)
    engine = KVEngine(4, clock, rng=random.Random(3))
    for i, (op, k, ttl) in enumerate(ops):
        key = b"k%d" % k
        if op == "ttl":
            engine.put(key, Record(b"v", v(i), START + ttl))
        elif op == "plain":
            engine.put(key, Record(b"v", v(i)))
        elif op == "delete":
            engine.delete(key, v(i))
        else:
            engine.drop(engine.partition_of(key))
        live_ttl = sum(
            1
            for p in range(4)
            for _, record in engine.export(p)
            if record.expires and not record.tombstone
        )
        assert engine.ttl_keys == live_ttl
    clock.advance(31.0)
    for _ in range(100):
        engine.expire_step()
        if engine.ttl_keys == 0:
            break
    assert engine.ttl_keys == 0
    assert all(not r.expires or r.tombstone for p in range(4) for _, r in engine.export(p))
    assert len(engine._ttl) == 0  # stale entries were removed as they were sampled


# ----------------------------------------------------------------------- the loop


async def test_run_active_expiry_frees_memory_on_the_clock() -> None:
    engine, clock, _ = make(ttl_keys=50, plain_keys=10, ttl=1.0)
    size_before = engine.size_bytes
    task = asyncio.create_task(run_active_expiry(engine, clock, interval=0.5))
    try:
        await clock.advance_async(0.5)
        assert engine.expired == 0
        for _ in range(4):
            await clock.advance_async(0.5)
        assert engine.expired == 50
        assert engine.ttl_keys == 0
        assert engine.size_bytes == size_before - 50  # each 1-byte value freed
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_active_expiry_survives_a_failing_step(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first step fails; the loop logs it and the next steps still expire every key.
    engine, clock, _ = make(ttl_keys=50, plain_keys=10, ttl=1.0)
    real_step = engine.expire_step
    failures = 0

    def flaky_step(sample: int = 20) -> int:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("boom")
        return real_step(sample)

    monkeypatch.setattr(engine, "expire_step", flaky_step)
    with caplog.at_level(logging.ERROR, logger="peer_ring.kv._expiry"):
        task = asyncio.create_task(run_active_expiry(engine, clock, 0.5, sample=7))
        try:
            for _ in range(6):
                await clock.advance_async(0.5)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert failures == 1
    assert "active expiry step failed" in caplog.text
    assert engine.expired == 50 and engine.ttl_keys == 0


async def test_run_active_expiry_rejects_a_bad_interval() -> None:
    engine, clock, _ = make(0, 0, 1.0)
    with pytest.raises(ValueError, match="interval"):
        await run_active_expiry(engine, clock, interval=0)
