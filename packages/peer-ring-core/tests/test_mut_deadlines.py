"""The deadline wheel and the transfer chunk deadline, to exact ticks (tools/mutation).

Resolution 0.5 s keeps every tick boundary exact in binary floating point, so the tests can
say precisely when a deadline fires: at the end of the tick holding ``now + timeout``,
never before it, with a timer armed for the earliest pending tick only (a second one only
when an earlier tick appears).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from peer_ring.core import RequestTimeoutError
from peer_ring.core._types import TransferRequest
from peer_ring.core.testing import FakeClock
from peer_ring.core.transport._deadlines import DEFAULT_RESOLUTION, DeadlineWheel, read_chunk_within


class Item:
    def __init__(self) -> None:
        self.expired = 0

    def expire(self) -> None:
        self.expired += 1


def test_the_default_resolution_is_five_milliseconds() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock)
    item = Item()
    assert DEFAULT_RESOLUTION == 0.005
    wheel.add(item, 0.0)
    clock.advance(0.004)
    assert item.expired == 0
    clock.advance(0.001)
    assert item.expired == 1


def test_a_deadline_fires_at_the_end_of_its_tick_not_before() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    clock.advance(0.25)
    item = Item()
    assert wheel.add(item, 1.0) == 3  # now + timeout = 1.25: tick 2 ends at 1.5 -> tick 3
    assert clock.next_deadline() == 1.5
    clock.advance(1.2499)  # t = 1.4999
    assert item.expired == 0
    clock.advance(0.0001)  # t = 1.5
    assert item.expired == 1


def test_deadlines_in_one_tick_share_one_timer_and_each_expires_once() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    a, b, c = Item(), Item(), Item()
    assert wheel.add(a, 1.0) == wheel.add(b, 1.2) == 3
    assert wheel.add(c, 0.9) == 2
    assert clock.pending_timers == 2
    clock.advance(1.0)
    assert (a.expired, b.expired, c.expired) == (0, 0, 1)
    clock.advance(0.5)
    assert (a.expired, b.expired, c.expired) == (1, 1, 1)
    assert clock.pending_timers == 0
    clock.advance(10.0)
    assert (a.expired, b.expired, c.expired) == (1, 1, 1)


def test_a_fired_tick_is_forgotten_and_a_later_deadline_in_it_gets_a_new_timer() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    first, second = Item(), Item()
    tick = wheel.add(first, 0.1)
    clock.advance(0.5)
    assert first.expired == 1
    assert wheel._ticks == {} and wheel._timers == {}  # nothing kept for a fired tick
    wheel.remove(first, tick)  # answered late: harmless
    clock.advance(0.1)
    assert wheel.add(second, 0.0) == 2  # t = 0.6 -> tick 2, a new timer
    assert clock.pending_timers == 1
    clock.advance(0.4)
    assert second.expired == 1


def test_removed_items_do_not_expire_the_rest_of_their_tick_does() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    kept, removed = Item(), Item()
    tick = wheel.add(kept, 1.0)
    assert wheel.add(removed, 1.0) == tick
    wheel.remove(removed, tick)
    wheel.remove(removed, tick + 7)  # a tick with nothing: no error
    clock.advance(1.5)
    assert (kept.expired, removed.expired) == (1, 0)


def test_close_cancels_every_timer_and_the_wheel_can_be_used_again() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    old, new = Item(), Item()
    wheel.add(old, 1.0)
    wheel.add(Item(), 3.0)
    wheel.close()
    assert clock.pending_timers == 0
    wheel.add(new, 1.0)
    clock.advance(5.0)
    assert (old.expired, new.expired) == (0, 1)


REQUEST = TransferRequest("kv", 7)


async def test_a_chunk_that_arrives_in_time_is_returned_and_its_timer_cancelled() -> None:
    clock = FakeClock()

    async def read() -> bytes:
        return b"chunk"

    assert await read_chunk_within(read(), clock, 2.0, "10.0.0.2:7101", REQUEST) == b"chunk"
    assert clock.pending_timers == 0


async def test_a_silent_peer_fails_the_read_after_exactly_the_deadline() -> None:
    clock = FakeClock()
    never: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(read_chunk_within(never, clock, 2.5, "10.0.0.2:7101", REQUEST))
    await asyncio.sleep(0)
    clock.advance(2.4)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.1)
    with pytest.raises(RequestTimeoutError) as caught:
        await task
    assert str(caught.value) == "transfer of kv/7 from 10.0.0.2:7101: no chunk within 2.5s"
    assert never.cancelled()


async def test_cancelling_the_reader_is_a_cancellation_not_a_timeout() -> None:
    clock = FakeClock()
    never: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(read_chunk_within(never, clock, 2.0, "10.0.0.2:7101", REQUEST))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending_timers == 0


class Hashed:
    """An item whose hash is chosen: a set of them iterates in hash order."""

    def __init__(self, value: int, log: list[int]) -> None:
        self.value = value
        self.log = log

    def __hash__(self) -> int:
        return self.value

    def expire(self) -> None:
        self.log.append(self.value)


def test_items_of_one_tick_expire_in_the_order_they_were_added_not_in_hash_order() -> None:
    # Default hashes are object addresses, which differ from run to run: expiring in hash
    # order made a seeded simulation's speculative reads go out in a different order.
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    log: list[int] = []
    added = [5, 1, 3, 7, 2]
    assert list({*added}) != added  # a set would expire them in another order
    ticks = {wheel.add(Hashed(v, log), 0.1) for v in added}
    wheel.add(Hashed(9, log), 0.6)  # another tick (fires at 1.0)
    ticks.add(wheel.add(Hashed(4, log), 0.1))  # the first tick again, not the latest one
    assert len(ticks) == 1
    clock.advance(0.5)
    assert log == [*added, 4]


def test_deadlines_on_a_hundred_ticks_arm_one_timer_and_fire_tick_by_tick() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    items = [Item() for _ in range(100)]
    for n, item in enumerate(items):
        assert wheel.add(item, 0.5 * n) == n + 1
    assert clock.pending_timers == 1
    assert clock.next_deadline() == 0.5
    for n, item in enumerate(items):
        clock.advance(0.4999)
        assert item.expired == 0
        clock.advance(0.0001)
        assert [i.expired for i in items[: n + 2]] == [1] * (n + 1) + [0][: 100 - n - 1]
        assert clock.pending_timers == (1 if n < 99 else 0)
    assert wheel._ticks == {} and wheel._timers == {} and wheel._pending == []


def test_an_earlier_tick_added_after_a_later_one_fires_on_time() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    late, early = Item(), Item()
    assert wheel.add(late, 2.0) == 5
    assert wheel.add(early, 0.5) == 2
    assert clock.next_deadline() == 1.0
    clock.advance(0.9999)
    assert early.expired == 0
    clock.advance(0.0001)
    assert (early.expired, late.expired) == (1, 0)
    clock.advance(1.4999)
    assert late.expired == 0
    clock.advance(0.0001)
    assert late.expired == 1
    assert clock.pending_timers == 0


def test_a_late_wake_up_expires_every_overdue_tick_in_tick_order(manual_clock: Any) -> None:
    clock = manual_clock
    wheel = DeadlineWheel(clock, resolution=0.5)
    log: list[int] = []
    for value, timeout in [(3, 1.0), (1, 0.0), (4, 1.5), (2, 0.5), (9, 10.0), (1_003, 1.0)]:
        wheel.add(Hashed(value, log), timeout)
    # Ticks 1..4 armed as each came earlier than the armed one: 3, then 1.
    assert len(clock.callbacks) == 2
    clock.fake.advance(2.0)  # ticks 1-4 are due; the timer of tick 1 wakes only now
    clock.callbacks[1]()
    assert log == [1, 2, 3, 1_003, 4]  # tick order, then insertion order within a tick
    assert len(clock.callbacks) == 2  # tick 3's timer is still armed: no third one
    clock.callbacks[0]()  # it fires: nothing more is due, and tick 21 gets a timer
    assert log == [1, 2, 3, 1_003, 4]
    assert len(clock.callbacks) == 3
    clock.fake.advance(8.5)
    clock.callbacks[2]()
    assert log == [1, 2, 3, 1_003, 4, 9]


def test_answered_ticks_are_dropped_and_cost_no_timer(counting_clock: Any) -> None:
    clock = counting_clock
    wheel = DeadlineWheel(clock, resolution=0.005)
    items = [Item() for _ in range(2_000)]
    kept = items[1_000]
    # Steady traffic: one request per millisecond for 2 s, 2 s timeout, answered in 1 ms,
    # except one request that never gets an answer.
    previous: tuple[Item, int] | None = None
    for item in items:
        tick = wheel.add(item, 2.0)
        if previous is not None and previous[0] is not kept:
            wheel.remove(*previous)
        previous = (item, tick)
        clock.advance(0.001)
    assert previous is not None
    wheel.remove(*previous)
    assert len(wheel._ticks) <= 2  # the unanswered request's tick and at most the latest
    assert clock.armed == 1  # the first tick's timer, not yet due
    clock.advance(2.0)
    assert clock.armed == 2  # then the unanswered request's tick, skipping the answered
    assert [i for i in items if i.expired] == [kept] and kept.expired == 1
    assert clock.pending_timers == 0


def test_an_expiring_item_may_add_and_remove_deadlines() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    fired: list[str] = []

    class Retry:
        def __init__(self, name: str) -> None:
            self.name = name
            self.tick = 0

        def expire(self) -> None:
            fired.append(self.name)
            if self.name == "a":
                wheel.remove(b, b.tick)  # the other item of the same tick
                self.tick = wheel.add(Retry("again"), 0.1)

    a, b = Retry("a"), Retry("b")
    a.tick = wheel.add(a, 1.0)
    b.tick = wheel.add(b, 1.0)
    wheel.add(Item(), 5.0)
    clock.advance(1.5)
    assert fired == ["a", "b"]  # b was already being expired with its tick
    clock.advance(0.5)
    assert fired == ["a", "b", "again"]


class Boom:
    def expire(self) -> None:
        raise RuntimeError("boom")


def test_an_expire_that_raises_leaves_the_other_overdue_ticks_armed(manual_clock: Any) -> None:
    clock = manual_clock
    wheel = DeadlineWheel(clock, resolution=0.5)
    after = Item()
    wheel.add(Boom(), 0.1)  # tick 1
    wheel.add(after, 0.6)  # tick 2
    assert len(clock.callbacks) == 1
    clock.fake.advance(1.0)  # both due
    with pytest.raises(RuntimeError, match="boom"):
        clock.callbacks[0]()
    assert after.expired == 0
    assert len(clock.callbacks) == 2  # tick 2 re-armed (already due) despite the error
    clock.callbacks[1]()
    assert after.expired == 1
