"""FakeClockEventLoop: the fake clock is the loop's time and jumps when nothing can run."""

from __future__ import annotations

import asyncio
import time

import pytest

from peer_ring.core.testing import (
    FakeClock,
    FakeClockEventLoop,
    current_clock,
    run,
    run_until_idle,
)


def test_an_hour_of_sleeps_takes_no_real_time() -> None:
    clock = FakeClock()

    async def main() -> float:
        await asyncio.sleep(3600)
        return asyncio.get_running_loop().time()

    started = time.monotonic()
    assert run(main(), clock=clock) == pytest.approx(3600)
    assert clock.monotonic() == pytest.approx(3600)
    assert time.monotonic() - started < 5.0  # generous: the point is "not an hour"


def test_loop_timers_and_fake_clock_timers_fire_in_deadline_order() -> None:
    clock = FakeClock()
    order: list[tuple[str, float]] = []

    async def loop_sleep(name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        order.append((name, clock.monotonic()))

    async def clock_sleep(name: str, delay: float) -> None:
        await clock.sleep(delay)
        order.append((name, clock.monotonic()))

    async def main() -> None:
        await asyncio.gather(
            loop_sleep("loop-3", 3.0),
            clock_sleep("clock-1", 1.0),
            clock_sleep("clock-5", 5.0),
            loop_sleep("loop-2", 2.0),
        )

    run(main(), clock=clock)
    assert order == [("clock-1", 1.0), ("loop-2", 2.0), ("loop-3", 3.0), ("clock-5", 5.0)]


def test_timeouts_fire_on_fake_time() -> None:
    async def main() -> float:
        never = asyncio.Event()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(never.wait(), 30.0)
        return current_clock().monotonic()

    assert run(main()) == pytest.approx(30.0)


def test_time_does_not_move_while_something_can_run() -> None:
    async def main() -> None:
        clock = current_clock()
        timer = asyncio.ensure_future(asyncio.sleep(1.0))
        for _ in range(1000):  # busy with ready callbacks: no jump
            await asyncio.sleep(0)
        assert clock.monotonic() == 0.0 and not timer.done()
        await timer
        assert clock.monotonic() == pytest.approx(1.0)

    run(main())


def test_run_until_idle_runs_chains_of_callbacks_without_moving_time() -> None:
    async def main() -> None:
        clock = current_clock()
        reached: list[int] = []

        async def chain(depth: int) -> None:
            for i in range(depth):
                await asyncio.sleep(0)
                reached.append(i)
            await asyncio.sleep(10.0)
            reached.append(-1)

        task = asyncio.ensure_future(chain(500))
        await run_until_idle()
        assert reached == list(range(500))  # everything runnable ran...
        assert clock.monotonic() == 0.0  # ...and time did not move
        await asyncio.sleep(10.0)
        await task
        assert reached[-1] == -1

    run(main())


def test_a_fake_timer_already_due_is_work_not_idleness() -> None:
    async def main() -> None:
        clock = current_clock()
        fired: list[float] = []
        clock.call_later(0.0, lambda: fired.append(clock.monotonic()))
        await run_until_idle()
        assert fired == [0.0]

    run(main())


def test_real_io_still_works() -> None:
    async def main() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        background = asyncio.ensure_future(asyncio.sleep(100.0))  # a timer pending meanwhile
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        line = await reader.readline()
        writer.close()
        server.close()
        await server.wait_closed()
        background.cancel()
        return line

    loop = FakeClockEventLoop(autojump_threshold=0.01)
    try:
        assert loop.run_until_complete(main()) == b"hello\n"
    finally:
        loop.close()


async def test_run_until_idle_refuses_an_ordinary_loop() -> None:
    with pytest.raises(RuntimeError, match="FakeClockEventLoop"):
        await run_until_idle()
    with pytest.raises(RuntimeError, match="FakeClockEventLoop"):
        current_clock()


@pytest.mark.fake_time
async def test_the_pytest_marker_runs_the_test_on_the_fake_loop(loop_clock: FakeClock) -> None:
    assert isinstance(asyncio.get_running_loop(), FakeClockEventLoop)
    await asyncio.sleep(600)
    assert loop_clock.monotonic() == pytest.approx(600)


def test_a_negative_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="autojump_threshold"):
        FakeClockEventLoop(autojump_threshold=-1)
