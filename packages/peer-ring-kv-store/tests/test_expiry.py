"""Active expiry: sampling frees expired keys without reads, with bounded work per step."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from hypothesis import given
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

    def sample(self, rng: random.Random, count: int) -> list[bytes]:
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


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=80))
def test_ttl_index_behaves_like_a_set(ops: list[tuple[bool, int]]) -> None:
    index = TTLIndex()
    model: set[bytes] = set()
    for add, n in ops:
        key = b"%d" % n
        if add:
            index.add(key)
            model.add(key)
        else:
            index.discard(key)
            model.discard(key)
        assert len(index) == len(model)
    assert set(index.sample(random.Random(0), len(model))) == model
    assert all(key in index for key in model)
    sample = index.sample(random.Random(0), 3)
    assert len(sample) == min(3, len(model))
    assert set(sample) <= model
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
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(START)
    calls: list[int] = []

    class Flaky:
        def expire_step(self, sample: int = 20) -> int:
            calls.append(sample)
            if len(calls) == 1:
                raise RuntimeError("boom")
            return 0

    with caplog.at_level(logging.ERROR, logger="peer_ring.kv._expiry"):
        task = asyncio.create_task(run_active_expiry(Flaky(), clock, 1.0, sample=7))  # type: ignore[arg-type]
        await clock.advance_async(1.0)
        await clock.advance_async(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert calls == [7, 7, 7]
    assert "active expiry step failed" in caplog.text


async def test_run_active_expiry_rejects_a_bad_interval() -> None:
    engine, clock, _ = make(0, 0, 1.0)
    with pytest.raises(ValueError, match="interval"):
        await run_active_expiry(engine, clock, interval=0)
