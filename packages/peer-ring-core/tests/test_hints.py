"""The hinted-handoff store (pure): bounds, order, backoff, refusals, TTL."""

from __future__ import annotations

from peer_ring.core._sync import Hint, HintStore

T1, T2 = "10.0.0.1:7101", "10.0.0.2:7101"


def hint(target: str, key: bytes, created: float = 0.0, payload: bytes = b"v") -> Hint:
    return Hint(target, "kv", "set", key, payload, 0, created)


def test_fifo_per_target_and_delivery() -> None:
    store = HintStore(100, 1 << 20, 60.0)
    for i in range(3):
        assert store.add(hint(T1, b"k%d" % i))
    store.add(hint(T2, b"x"))
    assert store.pending() == {T1: 3, T2: 1}
    head = store.head(T1, 2)
    assert [h.key for h in head] == [b"k0", b"k1"]
    for h in head:
        store.delivered(h)
    assert store.pending() == {T1: 1, T2: 1}
    assert store.counters.delivered == 2 and store.counters.stored == 4
    assert len(store) == 2


def test_bounded_by_count_and_bytes() -> None:
    store = HintStore(2, 1 << 20, 60.0)
    assert store.add(hint(T1, b"a")) and store.add(hint(T1, b"b"))
    assert not store.add(hint(T1, b"c"))
    assert store.counters.rejected_full == 1
    small = HintStore(100, 450, 60.0)
    assert small.add(hint(T1, b"a", payload=b"x" * 100))
    assert not small.add(hint(T1, b"b", payload=b"x" * 100))
    assert small.size_bytes <= 450


def test_backoff_after_unreachable_and_retry_now() -> None:
    store = HintStore(100, 1 << 20, 60.0, backoff_initial=1.0, backoff_max=4.0)
    store.add(hint(T1, b"a"))
    assert store.due_targets(0.0) == [T1]
    store.unreachable(T1, 0.0)
    assert store.due_targets(0.5) == [] and store.due_targets(1.0) == [T1]
    for _ in range(5):
        store.unreachable(T1, 0.0)
    assert store.due_targets(3.9) == [] and store.due_targets(4.0) == [T1]  # capped
    store.retry_now(T1)
    assert store.due_targets(0.0) == [T1]


def test_ttl_drops_old_hints_only() -> None:
    store = HintStore(100, 1 << 20, 10.0)
    store.add(hint(T1, b"old", created=0.0))
    store.add(hint(T1, b"new", created=5.0))
    assert store.expire(9.0) == {}
    assert store.expire(10.0) == {T1: 1}
    assert [h.key for h in store.head(T1, 10)] == [b"new"]
    assert store.counters.dropped_expired == 1


def test_a_refused_hint_is_dropped_after_max_refusals() -> None:
    store = HintStore(100, 1 << 20, 60.0, max_refusals=3)
    bad, good = hint(T1, b"bad"), hint(T1, b"good")
    store.add(bad)
    store.add(good)
    for _ in range(2):
        store.refused(bad, 0.0, "no")
    assert len(store) == 2
    store.refused(bad, 0.0, "no")
    assert [h.key for h in store.head(T1, 10)] == [b"good"]
    assert store.counters.dropped_refused == 1
