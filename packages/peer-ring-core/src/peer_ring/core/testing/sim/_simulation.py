"""The seeded simulation: one event loop, one fake time line, everything drawn from a seed.

A :class:`Simulation` owns the true time (a :class:`FakeClock` driving a
:class:`FakeClockEventLoop`, so time moves only when every node waits), a
:class:`FaultyNetwork`, one :class:`SkewedClock` per node and the seeded random generator
every choice is drawn from: the workload's, the faults', and the nodes' own (while the
simulation runs, ``random.Random()`` without a seed, made on the simulation's thread, and
the module-level ``random`` functions are seeded from it, so the core's jitter is part of
the replay; another thread's ``random.Random()`` is left alone).

What runs is up to the application (see ``peer_ring.kv.sim`` for the KV store's workload
and checker): it builds its nodes on :meth:`Simulation.transport` /
:meth:`Simulation.node_clock`, and runs :meth:`Simulation.nemesis` next to its workload.

Replay: the same seed and :class:`SimConfig` give the same run, event for event, in any
interpreter: nothing on the simulated path reads real time, and the core walks members
and healed links in sorted order, not in the order of sets of strings (which
``PYTHONHASHSEED`` changes). An application's own code must do the same; ``tools/sim``
still pins ``PYTHONHASHSEED=0`` for such code.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from peer_ring.core.testing._fake_clock import FakeClock
from peer_ring.core.testing._loop import FakeClockEventLoop
from peer_ring.core.testing._memory_network import MemoryTransport
from peer_ring.core.testing.sim._clock import SkewedClock
from peer_ring.core.testing.sim._network import FaultyNetwork, LinkFaults

_T = TypeVar("_T")

NodeAction = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class SimConfig:
    """What a simulation run may do to the cluster.

    Attributes:
        nodes: cluster size.
        links: message loss, duplication and delay on every link.
        max_skew: each node's wall clock is off by up to this many seconds (either way);
            about a third of the nodes get a sub-second skew, a third none.
        max_drift: each node's clock drifts by up to this many seconds per second.
        duration: simulated seconds of workload.
        fault_interval: mean simulated seconds between two nemesis actions.
        crashes: the nemesis may crash nodes (restarted later with empty memory).
        partitions: the nemesis may isolate a node from all the others.
        max_failed: nodes crashed or isolated at the same time, at most.
    """

    nodes: int = 5
    links: LinkFaults = field(
        default_factory=lambda: LinkFaults(loss=0.01, duplicate=0.01, max_delay=0.005)
    )
    max_skew: float = 2.0
    max_drift: float = 1e-4
    duration: float = 20.0
    fault_interval: float = 4.0
    crashes: bool = True
    partitions: bool = True
    max_failed: int = 1


class _SeededRandom(random.Random):
    """``random.Random`` whose unseeded instances made by the simulation's thread draw
    their seed from the simulation (another thread's are seeded as usual: when it makes
    one is real time, and it would shift the seeds of every later node)."""

    source: random.Random | None = None
    thread: int | None = None

    def __init__(self, x: Any = None) -> None:
        if (
            x is None
            and _SeededRandom.source is not None
            and threading.get_ident() == _SeededRandom.thread
        ):
            x = _SeededRandom.source.getrandbits(64)
        super().__init__(x)


class Simulation:
    """One seeded run (see the module docs).

    Args:
        seed: the run's seed; everything random derives from it.
        config: what the run may do.
    """

    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.config = config or SimConfig()
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.network = FaultyNetwork(
            self.clock, random.Random(self.rng.getrandbits(64)), self.config.links
        )
        self.addresses = [f"sim-{i}:7000" for i in range(self.config.nodes)]
        self.clocks = {a: self._draw_clock() for a in self.addresses}
        #: Events of the run, in order, each stamped with the true time (for replay checks
        #: and for reading a failure).
        self.trace: list[str] = []
        #: Nodes currently crashed or isolated by the nemesis.
        self.failed: dict[str, str] = {}
        for address, clock in self.clocks.items():
            self.log(f"clock {address} skew={clock.skew:+.6f}s drift={clock.drift:+.2e}")

    def _draw_clock(self) -> SkewedClock:
        cfg, rng = self.config, self.rng
        kind = rng.randrange(3)
        if kind == 0:
            skew = 0.0
        elif kind == 1:
            skew = rng.uniform(-min(1.0, cfg.max_skew), min(1.0, cfg.max_skew))
        else:
            skew = rng.uniform(-cfg.max_skew, cfg.max_skew)
        return SkewedClock(self.clock, skew, rng.uniform(-cfg.max_drift, cfg.max_drift))

    def log(self, event: str) -> None:
        """Append ``event`` to :attr:`trace`, stamped with the true time."""
        self.trace.append(f"{self.clock.monotonic():10.6f} {event}")

    def transport(self, address: str) -> MemoryTransport:
        """A new transport for the node at ``address`` (one per start of the node)."""
        return self.network.transport(address)

    def node_clock(self, address: str) -> SkewedClock:
        """The wall clock of the node at ``address``."""
        return self.clocks[address]

    def run(self, main: Coroutine[Any, Any, _T]) -> _T:
        """Run ``main`` on a fresh fake-time event loop, with ``random`` seeded; return its
        result."""
        loop_factory = functools.partial(FakeClockEventLoop, self.clock)
        with self._seeded_random(), asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main)

    @contextmanager
    def _seeded_random(self) -> Iterator[None]:
        original, state = random.Random, random.getstate()
        _SeededRandom.source = random.Random(self.rng.getrandbits(64))
        _SeededRandom.thread = threading.get_ident()
        random.seed(self.rng.getrandbits(64))
        random.Random = _SeededRandom  # type: ignore[misc]
        try:
            yield
        finally:
            random.Random = original  # type: ignore[misc]
            _SeededRandom.source = None
            _SeededRandom.thread = None
            random.setstate(state)

    async def nemesis(self, crash: NodeAction, restart: NodeAction, until: float) -> None:
        """Crash, restart, isolate and heal nodes at random until true time ``until``.

        At most ``config.max_failed`` nodes are down or isolated at once; every node is
        back (restarted or healed) when this returns. ``crash(address)`` must stop the
        node abruptly and ``restart(address)`` start it again with empty memory.
        """
        cfg, rng = self.config, self.rng
        kinds = [k for k, on in (("crash", cfg.crashes), ("isolate", cfg.partitions)) if on]
        while kinds and self.clock.monotonic() < until:
            await self.clock.sleep(rng.expovariate(1.0 / cfg.fault_interval))
            if self.clock.monotonic() >= until:
                break
            if len(self.failed) < cfg.max_failed and rng.random() < 0.6:
                address = rng.choice([a for a in self.addresses if a not in self.failed])
                kind = rng.choice(kinds)
                self.failed[address] = kind
                self.log(f"nemesis {kind} {address}")
                if kind == "crash":
                    await crash(address)
                else:
                    self.network.partition([address], [a for a in self.addresses if a != address])
            elif self.failed:
                address = rng.choice(sorted(self.failed))
                await self._recover(address, restart)
        for address in sorted(self.failed):
            await self._recover(address, restart)

    async def _recover(self, address: str, restart: NodeAction) -> None:
        kind = self.failed.pop(address)
        self.log(f"nemesis recover {address} from {kind}")
        if kind == "crash":
            await restart(address)
        else:
            for other in self.addresses:
                if other != address:
                    self.network.heal(address, other)
