"""The deadline wheel and the transfer chunk deadline, to exact ticks (tools/mutation).

Resolution 0.5 s keeps every tick boundary exact in binary floating point, so the tests can
say precisely when a deadline fires: at the end of the tick holding ``now + timeout``,
never before it, and with one timer per tick.
"""

from __future__ import annotations

import asyncio

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
