"""The forwarding batcher: one flush per loop turn, and at most ``max_in_flight`` flushes
awaiting their answer (items arriving meanwhile leave together in the next flush)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from peer_ring.ratelimit._batcher import Batcher


class Peer:
    """A flush target whose answers the test releases one flush at a time."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release: list[asyncio.Event] = []

    async def flush(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        gate = asyncio.Event()
        self.release.append(gate)
        await gate.wait()
        return [i * 10 if i >= 0 else ValueError(f"bad {i}") for i in items]


async def turn() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_one_flush_per_loop_turn_without_a_bound() -> None:
    peer = Peer()
    b: Batcher[int, int] = Batcher(peer.flush)
    first = [b.submit(i) for i in range(3)]
    await turn()
    second = [b.submit(i) for i in range(3, 5)]
    await turn()
    assert peer.batches == [[0, 1, 2], [3, 4]]  # two flushes in flight at once
    for gate in peer.release:
        gate.set()
    assert await asyncio.gather(*first, *second) == [0, 10, 20, 30, 40]


async def test_items_wait_for_a_free_slot_and_leave_together() -> None:
    peer = Peer()
    sizes: list[int] = []
    b: Batcher[int, int] = Batcher(peer.flush, max_in_flight=1, on_batch=sizes.append)
    first = b.submit(1)
    await turn()
    waiting = [b.submit(i) for i in (2, 3)]
    await turn()
    waiting.append(b.submit(4))
    await turn()
    assert peer.batches == [[1]]  # the bound holds: nothing else sent yet
    peer.release[0].set()
    assert await first == 10
    await turn()
    assert peer.batches == [[1], [2, 3, 4]] and sizes == [1, 3]
    assert b.waited == 3  # each found the one slot busy
    peer.release[1].set()
    assert await asyncio.gather(*waiting) == [20, 30, 40]


async def test_per_item_errors_and_close_drains_waiting_items() -> None:
    peer = Peer()
    b: Batcher[int, int] = Batcher(peer.flush, max_in_flight=1)
    a = b.submit(1)
    await turn()
    bad, good = b.submit(-1), b.submit(5)

    async def answer_all() -> None:
        while len(peer.release) < 2:
            for gate in peer.release:
                gate.set()
            await asyncio.sleep(0)
        for gate in peer.release:
            gate.set()

    releaser = asyncio.create_task(answer_all())
    await asyncio.wait_for(b.close(), 5)
    await releaser
    assert a.result() == 10 and good.result() == 50
    with pytest.raises(ValueError, match="bad -1"):
        bad.result()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_max_items_splits_a_burst_and_the_rest_waits_for_a_slot() -> None:
    peer = Peer()
    b: Batcher[int, int] = Batcher(peer.flush, max_in_flight=1, max_items=2)
    futs = [b.submit(i) for i in range(5)]
    await settle()
    assert peer.batches == [[0, 1]]  # one in flight, at most two items; three wait
    peer.release[0].set()
    await settle()
    assert peer.batches == [[0, 1], [2, 3]]
    peer.release[1].set()
    await settle()
    assert peer.batches == [[0, 1], [2, 3], [4]]
    peer.release[2].set()
    assert await asyncio.gather(*futs) == [0, 10, 20, 30, 40]


async def test_max_items_without_an_in_flight_bound_sends_every_chunk() -> None:
    peer = Peer()
    b: Batcher[int, int] = Batcher(peer.flush, max_items=2)
    futs = [b.submit(i) for i in range(5)]
    await settle()
    assert peer.batches == [[0, 1], [2, 3], [4]]
    for gate in peer.release:
        gate.set()
    assert await asyncio.gather(*futs) == [0, 10, 20, 30, 40]


async def test_fail_pending_fails_only_the_waiting_items() -> None:
    peer = Peer()
    b: Batcher[int, int] = Batcher(peer.flush, max_in_flight=1, max_items=2)
    futs = [b.submit(i) for i in range(5)]
    await settle()
    assert b.fail_pending(ConnectionError("gone")) == 3
    for fut in futs[2:]:
        with pytest.raises(ConnectionError, match="gone"):
            await fut
    peer.release[0].set()
    assert await asyncio.gather(*futs[:2]) == [0, 10]
    await settle()
    assert peer.batches == [[0, 1]]  # nothing left to send
    assert b.fail_pending(ConnectionError("gone")) == 0


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(Peer().flush, max_in_flight=0)
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(Peer().flush, max_items=0)


async def test_a_lone_item_is_flushed_at_the_next_loop_turn() -> None:
    # The flush's task is created on submit: one loop turn later the item is on its way
    # (a callback that then created the task took two turns).
    peer = Peer()
    b: Batcher[int, int] = Batcher(peer.flush, max_in_flight=1)
    fut = b.submit(1)
    fut_same_turn = b.submit(2)
    await asyncio.sleep(0)
    assert peer.batches == [[1, 2]]
    peer.release[0].set()
    assert await asyncio.gather(fut, fut_same_turn) == [10, 20]
    await b.close()


async def test_lone_items_do_not_wait_for_each_other_at_a_light_load() -> None:
    # A light load: every flush in flight holds one item, so the next item leaves at once
    # instead of waiting for the previous round trip (up to light_in_flight flushes).
    peer = Peer()
    b: Batcher[int, int] = Batcher(peer.flush, max_in_flight=1, light_in_flight=3)
    futs = []
    for i in range(4):
        futs.append(b.submit(i))
        await turn()
    assert peer.batches == [[0], [1], [2]]  # the fourth waits: three flushes in flight
    assert b.waited == 1
    peer.release[1].set()
    await turn()
    assert peer.batches == [[0], [1], [2], [3]]
    for gate in peer.release:
        gate.set()
    assert await asyncio.gather(*futs) == [0, 10, 20, 30]
    await b.close()


async def test_a_batch_in_flight_keeps_the_bound_under_load() -> None:
    # Under load the flush in flight holds several items: a new item waits as before.
    peer = Peer()
    b: Batcher[int, int] = Batcher(peer.flush, max_in_flight=1, light_in_flight=2)
    first = [b.submit(i) for i in (1, 2)]
    await turn()
    later = b.submit(3)
    await turn()
    assert peer.batches == [[1, 2]]
    peer.release[0].set()
    await turn()
    assert peer.batches == [[1, 2], [3]]
    peer.release[1].set()
    assert await asyncio.gather(*first, later) == [10, 20, 30]


async def test_a_flush_beside_a_light_one_takes_what_its_turn_gathered() -> None:
    # The flush that leaves beside a lone one carries every item of its loop turn; once a
    # flush holding several items is in flight, the bound holds again.
    peer = Peer()
    b: Batcher[int, int] = Batcher(peer.flush, max_in_flight=1, light_in_flight=4)
    a = b.submit(1)
    await turn()
    burst = [b.submit(i) for i in (2, 3, 4)]
    await turn()
    rest = b.submit(5)
    await turn()
    assert peer.batches == [[1], [2, 3, 4]]  # a flush of three in flight: 5 waits
    assert b.waited == 1
    peer.release[0].set()
    await turn()
    assert peer.batches == [[1], [2, 3, 4]]  # the flush of three is still in flight
    peer.release[1].set()
    await turn()
    assert peer.batches == [[1], [2, 3, 4], [5]]
    peer.release[2].set()
    assert await asyncio.gather(a, *burst, rest) == [10, 20, 30, 40, 50]


def test_light_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(Peer().flush, light_in_flight=0)
