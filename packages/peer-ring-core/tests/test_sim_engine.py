"""The simulator's parts: skewed clocks, the faulty network, seeded runs, the nemesis."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from peer_ring.core._errors import RequestTimeoutError
from peer_ring.core._types import Request, Response
from peer_ring.core.testing import FakeClock, MemoryTransport
from peer_ring.core.testing.sim import FaultyNetwork, LinkFaults, SimConfig, Simulation, SkewedClock


def test_skewed_clock_is_off_by_skew_plus_drift_and_keeps_true_monotonic_time() -> None:
    base = FakeClock(start=1000.0)
    clock = SkewedClock(base, skew=0.25, drift=1e-3)
    assert clock.time() == pytest.approx(1000.25)
    base.advance(100.0)
    assert clock.time() == pytest.approx(1100.25 + 0.1)
    assert clock.monotonic() == base.monotonic() == pytest.approx(100.0)


async def _echo_pair(
    network: FaultyNetwork, calls: list[bytes]
) -> tuple[MemoryTransport, MemoryTransport]:
    a, b = network.transport("a:1"), network.transport("b:1")

    def on_request(source: str, request: Request) -> Response:
        calls.append(request.payload)
        return Response(payload=request.payload)

    async def no_transfer(source: str, request: object) -> object:  # pragma: no cover
        raise AssertionError("no transfers here")

    await a.start(on_request, no_transfer)  # type: ignore[arg-type]
    await b.start(on_request, no_transfer)  # type: ignore[arg-type]
    return a, b


def _run(sim: Simulation, coro: object) -> object:
    return sim.run(coro)  # type: ignore[arg-type]


def test_lost_messages_time_out_and_duplicates_run_the_handler_twice() -> None:
    sim = Simulation(seed=1, config=SimConfig(nodes=2))
    calls: list[bytes] = []

    async def main() -> tuple[bool, int]:
        network = FaultyNetwork(sim.clock, random.Random(1), LinkFaults(loss=1.0))
        a, _ = await _echo_pair(network, calls)
        lost = False
        try:
            await a.request("b:1", Request("ns", "echo", b"k", b"1", 0, "", 0.5))
        except RequestTimeoutError:
            lost = True
        network.faults = LinkFaults(duplicate=1.0)
        reply = await a.request("b:1", Request("ns", "echo", b"k", b"2", 0, "", 0.5))
        await asyncio.sleep(0.1)
        return lost, len(reply.payload) + network.duplicated

    lost, score = _run(sim, main())  # type: ignore[misc]
    assert lost
    assert calls == [b"2", b"2"]  # the lost one never arrived; the duplicated one twice
    assert score >= 2


def test_delays_reorder_messages_on_one_link() -> None:
    sim = Simulation(seed=2, config=SimConfig(nodes=2))
    calls: list[bytes] = []

    async def main() -> None:
        network = FaultyNetwork(sim.clock, random.Random(5), LinkFaults(max_delay=0.05))
        a, _ = await _echo_pair(network, calls)
        await asyncio.gather(
            *(
                a.request("b:1", Request("ns", "echo", b"k", bytes([i]), 0, "", 1.0))
                for i in range(20)
            )
        )

    _run(sim, main())
    assert sorted(calls) == [bytes([i]) for i in range(20)]
    assert calls != sorted(calls)


def test_same_seed_same_draws_and_the_nemesis_keeps_at_most_one_node_failed() -> None:
    def one(seed: int) -> tuple[list[str], int]:
        sim = Simulation(seed, SimConfig(nodes=4, fault_interval=1.0))
        worst = 0
        down: set[str] = set()

        async def crash(address: str) -> None:
            down.add(address)

        async def restart(address: str) -> None:
            down.discard(address)

        async def watch() -> None:
            nonlocal worst
            while sim.clock.monotonic() < 30:
                worst = max(worst, len(sim.failed))
                await sim.clock.sleep(0.1)

        async def main() -> None:
            await asyncio.gather(sim.nemesis(crash, restart, until=30.0), watch())
            assert not sim.failed and not down
            # The core's unseeded generators are seeded from the simulation.
            sim.log(f"draw {random.Random().random():.12f} {random.random():.12f}")

        sim.run(main())
        return sim.trace, worst

    trace, worst = one(11)
    assert worst == 1
    assert sum("nemesis crash" in t or "nemesis isolate" in t for t in trace) >= 3
    assert one(11)[0] == trace
    assert one(12)[0] != trace


def test_random_instances_made_by_another_thread_do_not_shift_the_replay() -> None:
    # random.Random is patched process-wide while a simulation runs; a generator another
    # thread makes meanwhile (a library, another test's leftover thread) must not take a
    # seed from the simulation, or the nodes' generators made after it would change.
    def one(other_thread: bool) -> list[str]:
        sim = Simulation(3)

        async def main() -> None:
            if other_thread:
                thread = threading.Thread(target=random.Random)
                thread.start()
                thread.join()
            sim.log(f"draw {random.Random().random():.12f}")

        sim.run(main())
        return sim.trace

    assert one(other_thread=True) == one(other_thread=False)
