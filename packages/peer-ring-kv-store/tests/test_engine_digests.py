"""The engine's digests: deferred per-write updates of small partitions, the cached list.

A partition of at most ``_DEFER_MAX`` records that takes more writes between two
``digests()`` calls than it holds records (plus ``_BUDGET_MIN``) stops updating its digest
per write; ``digests()`` recounts it. ``digests()`` keeps the list it built until the
partition's digest changes. What ``digests()`` returns must not depend on either.
"""

from __future__ import annotations

from peer_ring.core.testing import FakeClock
from peer_ring.kv._engine import KVEngine
from peer_ring.kv._engine_layout import _BUDGET_MIN, _DEFER_MAX, _NEVER
from peer_ring.kv._record import Record
from peer_ring.kv._versions import Version

START = 1_700_000_000.0
T0 = int(START * 1_000_000)


def keys_of(engine: KVEngine, partition: int, count: int) -> list[bytes]:
    """``count`` keys of ``partition``."""
    found: list[bytes] = []
    i = 0
    while len(found) < count:
        key = b"key-%d" % i
        if engine.partition_of(key) == partition:
            found.append(key)
        i += 1
    return found


def twin_engines() -> tuple[FakeClock, KVEngine, KVEngine]:
    """Two engines on one clock: ``eager`` is digested after every write (never defers),
    ``lazy`` only when a test asks."""
    clock = FakeClock(START)
    return clock, KVEngine(4, clock, tombstone_grace=10.0), KVEngine(4, clock, tombstone_grace=10.0)


def write(engines: tuple[KVEngine, ...], key: bytes, seq: int, *, delete: bool = False) -> None:
    version = Version(T0 + seq, 0, "10.0.0.1:7000")
    record = Record.deleted(version) if delete else Record(b"v%d" % seq, version)
    for engine in engines:
        engine.put(key, record)


def test_a_small_partition_written_more_than_its_budget_defers_and_is_recounted() -> None:
    _, eager, lazy = twin_engines()
    keys = keys_of(lazy, 1, 3)
    seq = 0
    for key in keys:
        seq += 1
        write((eager, lazy), key, seq)
        eager.digests(1)
    lazy.digests(1)  # the budget is now the partition's size + _BUDGET_MIN
    assert lazy._digest_budget[1] == len(keys) + _BUDGET_MIN
    for _ in range(len(keys) + _BUDGET_MIN):
        seq += 1
        write((eager, lazy), keys[seq % len(keys)], seq)
        eager.digests(1)
    assert lazy._digest_budget[1] == 0  # every write so far updated the digest
    before = list(lazy._digest[1])
    seq += 1
    write((eager, lazy), keys[0], seq)  # past the budget: deferred, the digest is stale
    assert lazy._digest_budget[1] < 0
    assert list(lazy._digest[1]) == before
    seq += 1
    write((eager, lazy), b"another-" + keys[0], seq, delete=True)  # more deferred writes
    write((eager, lazy), keys[1], seq + 1, delete=True)
    assert lazy.digests(1) == eager.digests(1)  # recounted: what the updates give
    assert lazy._digest_budget[1] >= 0
    assert list(lazy._digest[1]) == list(eager._digest[1])


def test_removals_while_deferred_leave_the_recount_exact() -> None:
    clock, eager, lazy = twin_engines()
    keys = keys_of(lazy, 2, 4)
    for seq, key in enumerate(keys * 3):
        write((eager, lazy), key, seq, delete=seq % 2 == 0)
        eager.digests(2)
    assert lazy._digest_budget[2] < 0
    clock.advance(20.0)  # past the grace: the tombstones are collected (and leave digests)
    assert lazy.collect_tombstones() == eager.collect_tombstones() > 0
    assert lazy.digests(2) == eager.digests(2)
    lazy.drop(2)
    assert lazy._digest_budget[2] == _BUDGET_MIN
    assert lazy.digests(2) == [b""] * 64


def test_a_partition_growing_past_the_bound_is_recounted_and_never_defers() -> None:
    _, eager, lazy = twin_engines()
    keys = keys_of(lazy, 3, _DEFER_MAX + 2)
    for seq, key in enumerate(keys):
        write((eager, lazy), key, seq)
        eager.digests(3)
        if len(lazy._parts[3]) > _DEFER_MAX:
            # The insert that took it past the bound recounted it on the spot.
            assert lazy._digest_budget[3] > _NEVER - len(keys)
    assert lazy.digests(3) == eager.digests(3)
    assert lazy._digest_budget[3] == _NEVER  # larger partitions update per write
    for seq, key in enumerate(keys * 2, start=100):
        write((eager, lazy), key, seq)
    assert lazy._digest_budget[3] == _NEVER - 2 * len(keys)
    assert lazy.digests(3) == eager.digests(3)


def test_digests_are_built_once_until_the_partition_changes() -> None:
    _, engine, _ = twin_engines()
    key = keys_of(engine, 0, 1)[0]
    write((engine,), key, 1)
    first = engine.digests(0)
    second = engine.digests(0)
    assert second == first and second is not first  # a copy each time
    assert all(a is b for a, b in zip(first, second, strict=True))  # the same bytes objects
    first[0] = b"changed by the caller"
    assert engine.digests(0) == second  # a caller's change does not leak into the cache
    write((engine,), key, 2)  # a change: built again
    third = engine.digests(0)
    assert third != second
    assert engine.digests(1) == [b""] * 64
