"""The deadline wheel's edge cases found by tools/mutation on the one-timer wheel: a tick
re-added after it fired (early) or after it was answered in full, ``add_at``, idempotent
``remove``, ``close`` then reuse, and the deadline group handed to its owner.

Observable behaviour only: when each item expires (never early, at most one tick late,
exactly once, in insertion order within a tick) and how many clock timers the wheel arms.
Resolution 0.5 s keeps every tick boundary exact in binary floating point; ``FakeClock``'s
monotonic time starts at 0, so ``timeout`` 0.1 at t = 0 is tick 1 (it ends at t = 0.5).
"""

from __future__ import annotations

from typing import Any

import pytest

from peer_ring.core.testing import FakeClock
from peer_ring.core.transport._deadlines import DeadlineGroup, DeadlineWheel


class Item:
    def __init__(self, log: list[str] | None = None, name: str = "") -> None:
        self.expired = 0
        self.log = log
        self.name = name

    def expire(self) -> None:
        self.expired += 1
        if self.log is not None:
            self.log.append(self.name)


def test_add_at_a_tick_computed_as_add_does_expires_with_the_items_of_add() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    clock.advance(0.25)
    log: list[str] = []
    # The public tick arithmetic callers (the outbound deadline groups) use.
    assert wheel.resolution == 0.5
    assert wheel.monotonic() == 0.25
    tick = int((wheel.monotonic() + 1.0) / wheel.resolution) + 1
    assert wheel.add(Item(log, "add"), 1.0) == tick == 3
    wheel.add_at(Item(log, "at, same tick"), tick)  # the latest tick: its fast path
    wheel.add_at(Item(log, "at, later tick"), tick + 1)  # a new tick
    wheel.add_at(Item(log, "at, same tick again"), tick)  # no longer the latest tick
    assert clock.pending_timers == 1
    clock.advance(1.2499)  # t = 1.4999: tick 3 ends at 1.5
    assert log == []
    clock.advance(0.0001)
    assert log == ["add", "at, same tick", "at, same tick again"]
    clock.advance(0.4999)
    assert log == ["add", "at, same tick", "at, same tick again"]
    clock.advance(0.0001)
    assert log == ["add", "at, same tick", "at, same tick again", "at, later tick"]
    assert clock.pending_timers == 0


def test_add_at_an_earlier_tick_arms_its_own_timer_and_fires_on_time() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    late, early = Item(), Item()
    wheel.add(late, 2.0)  # tick 5
    wheel.add_at(early, 2)  # ends at t = 1.0
    assert clock.next_deadline() == 1.0
    clock.advance(0.9999)
    assert early.expired == 0
    clock.advance(0.0001)
    assert (early.expired, late.expired) == (1, 0)


def test_an_item_added_to_a_tick_that_just_fired_early_still_expires_once(
    manual_clock: Any,
) -> None:
    clock = manual_clock
    wheel = DeadlineWheel(clock, resolution=0.5)
    first, second = Item(), Item()
    assert wheel.add(first, 0.1) == 1
    clock.callbacks[0]()  # tick 1's timer, fired before t = 0.5
    assert first.expired == 1
    assert wheel.add(second, 0.1) == 1  # still tick 1: a new timer, never lost
    assert len(clock.callbacks) == 2
    assert clock.delays[1] == 0.5  # at the end of tick 1, not earlier
    clock.fake.advance(0.5)
    clock.callbacks[1]()
    assert (first.expired, second.expired) == (1, 1)


def test_an_item_added_to_an_early_fired_tick_after_an_answered_later_tick_expires(
    manual_clock: Any,
) -> None:
    clock = manual_clock
    wheel = DeadlineWheel(clock, resolution=0.5)
    first, answered, again = Item(), Item(), Item()
    wheel.add(first, 0.1)  # tick 1
    tick = wheel.add(answered, 0.6)  # tick 2, the latest
    wheel.remove(answered, tick)  # answered: tick 2 is empty
    clock.callbacks[0]()  # tick 1 fires (early); tick 2 needs no timer
    assert first.expired == 1 and len(clock.callbacks) == 1
    assert wheel.add(again, 0.1) == 1
    assert len(clock.callbacks) == 2
    clock.fake.advance(0.5)
    clock.callbacks[1]()
    assert (first.expired, answered.expired, again.expired) == (1, 0, 1)


def test_a_latest_tick_answered_in_full_then_used_again_after_a_fire_is_not_lost() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    first, answered, later = Item(), Item(), Item()
    wheel.add(first, 0.1)  # tick 1, ends at 0.5
    tick = wheel.add(answered, 0.6)  # tick 2, the latest
    wheel.remove(answered, tick)
    clock.advance(0.5)  # tick 1 fires; the empty tick 2 is dropped
    assert first.expired == 1
    assert wheel.add(later, 0.1) == 2  # t = 0.5: tick 2 again
    assert clock.pending_timers == 1
    clock.advance(0.4999)
    assert later.expired == 0
    clock.advance(0.0001)
    assert (first.expired, answered.expired, later.expired) == (1, 0, 1)


def test_a_tick_answered_in_full_and_added_to_again_reuses_its_armed_timer(
    counting_clock: Any,
) -> None:
    clock = counting_clock
    wheel = DeadlineWheel(clock, resolution=0.5)
    answered, later, again = Item(), Item(), Item()
    tick = wheel.add(answered, 0.1)  # tick 1: its timer is armed
    wheel.remove(answered, tick)  # the latest tick answered in full
    assert wheel.add(later, 1.0) == 3  # a new latest tick
    assert wheel.add(again, 0.1) == tick  # tick 1 again, no longer the latest
    assert clock.armed == 1 and clock.pending_timers == 1  # one timer per wheel
    clock.advance(0.4999)
    assert again.expired == 0
    clock.advance(0.0001)
    assert (answered.expired, again.expired, later.expired) == (0, 1, 0)
    clock.advance(1.0)
    assert later.expired == 1
    assert clock.armed == 2 and clock.pending_timers == 0
    wheel.close()
    assert clock.pending_timers == 0


def test_answered_latest_ticks_are_not_kept_when_the_next_tick_starts() -> None:
    # Requests answered at once (the usual case): each tick's dict goes when the next tick
    # starts, not at its deadline (seconds later): the wheel holds one tick, not hundreds.
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    items = [Item() for _ in range(20)]
    for item in items:
        wheel.remove(item, wheel.add(item, 5.0))
        clock.advance(0.5)
    assert len(wheel._ticks) == 1
    clock.advance(10.0)
    assert [i.expired for i in items] == [0] * 20


def test_an_earlier_armed_tick_firing_does_not_arm_a_second_timer_for_the_later_one(
    counting_clock: Any,
) -> None:
    clock = counting_clock
    wheel = DeadlineWheel(clock, resolution=0.5)
    late, early = Item(), Item()
    wheel.add(late, 2.0)  # tick 5: armed
    wheel.add(early, 0.5)  # tick 2: earlier, armed too
    assert clock.armed == 2
    clock.advance(1.0)  # tick 2 fires; tick 5's timer is still armed
    assert (early.expired, late.expired) == (1, 0)
    assert clock.armed == 2 and clock.pending_timers == 1
    wheel.close()
    assert clock.pending_timers == 0  # close cancels every timer the wheel armed


def test_remove_is_idempotent_in_the_latest_tick_and_in_earlier_ones() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    early, other, latest = Item(), Item(), Item()
    early_tick = wheel.add(early, 0.1)
    wheel.add(other, 0.1)
    latest_tick = wheel.add(latest, 1.0)
    for _ in range(2):  # answered, then cancelled: the second call finds nothing
        wheel.remove(latest, latest_tick)
        wheel.remove(early, early_tick)
    wheel.remove(Item(), latest_tick)  # never added
    wheel.remove(Item(), early_tick)
    clock.advance(2.0)
    assert (early.expired, other.expired, latest.expired) == (0, 1, 0)


def test_after_close_the_first_tick_is_usable_again() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    old, new = Item(), Item()
    assert wheel.add(old, 0.1) == 1
    wheel.close()
    assert wheel.add(new, 0.1) == 1
    assert clock.pending_timers == 1
    clock.advance(0.5)
    assert (old.expired, new.expired) == (0, 1)


@pytest.mark.parametrize(("timeout", "tick"), [(-0.6, 0), (-1.1, -1)])
def test_a_first_deadline_at_tick_zero_or_below_expires_at_once(timeout: float, tick: int) -> None:
    # A negative timeout (a deadline already passed) on a clock still near 0, as a fake
    # clock is: tick 0 once was also the wheel's "no latest tick" marker, and such an item
    # went into a dict no timer ever looked at.
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    first, second, at = Item(), Item(), Item()
    assert wheel.add(first, timeout) == tick
    assert wheel.add(second, timeout) == tick  # the latest tick's fast path
    assert clock.pending_timers == 1
    clock.advance(0.0)
    assert (first.expired, second.expired) == (1, 1)
    wheel.add_at(at, tick)  # after the fire reset the latest tick
    clock.advance(0.0)
    assert at.expired == 1
    assert clock.pending_timers == 0


def test_add_at_tick_zero_first_and_after_close_expires() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    first, later = Item(), Item()
    wheel.add_at(first, 0)
    clock.advance(0.0)
    wheel.close()
    wheel.add_at(later, 0)
    clock.advance(0.0)
    assert (first.expired, later.expired) == (1, 1)


class Owner:
    def __init__(self) -> None:
        self.expired: list[DeadlineGroup] = []

    def expire_group(self, group: DeadlineGroup) -> None:
        self.expired.append(group)


def test_a_deadline_group_starts_with_its_first_id_and_is_handed_to_its_owner() -> None:
    owner = Owner()
    group = DeadlineGroup(owner, 7, 41)
    assert (group.owner, group.tick, group.first, group.last, group.pending) == (
        owner,
        7,
        41,
        41,
        0,
    )
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.5)
    group.tick = wheel.add(group, 0.1)
    clock.advance(0.5)
    assert owner.expired == [group] and owner.expired[0] is group
