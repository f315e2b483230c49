"""The KV store in the deterministic simulator: a workload and a consistency checker.

``run_seed(seed)`` starts a cluster of :class:`KVStore` nodes in a
:class:`~peer_ring.core.testing.sim.Simulation` (N=3, W=2, R=2; lossy, duplicating,
reordering links; skewed and drifting clocks; a nemesis crashing, restarting-empty and
isolating at most one node at a time), runs one sequential client per key writing,
deleting and reading through random nodes, then heals everything, lets hints and
anti-entropy settle and reads every key once more. :func:`check` verifies the model of
docs/consistency.md on the recorded history:

* every successful read returns the value of the last acknowledged write of the key
  before the read (``None`` after an acknowledged delete), or the value of a write that
  failed (a failed write is indeterminate: it may take effect at any later time);
* so no acknowledged write is lost to an older one, and no deleted value comes back.

``python -m peer_ring.kv.sim`` (``tools/sim``) runs many seeds, replays one and shrinks a
failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FixedDiscovery
from peer_ring.core.testing.sim import SimConfig, Simulation
from peer_ring.kv._store import KVStore

#: Keys of the workload (one sequential client each).
KEYS = ("k0", "k1", "k2", "k3")
#: Seconds of true time for hints, pulls and anti-entropy after the last fault.
SETTLE = 30.0
#: Attempts of each final read (a lost request or reply fails one attempt).
FINAL_READ_ATTEMPTS = 5


@dataclass
class Op:
    """One client operation: what, on which key, through which node, when, and how it
    ended (``ok`` False: failed, indeterminate for a write)."""

    kind: str  # "set" | "delete" | "get"
    key: str
    value: str | None
    node: str
    start: float
    end: float = 0.0
    ok: bool = False
    error: str = ""


@dataclass
class SimResult:
    """The outcome of one seed."""

    seed: int
    history: list[Op] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the checker found nothing."""
        return not self.errors


def check(history: list[Op]) -> list[str]:
    """Check ``history`` (see the module docs); return one message per violation."""
    errors: list[str] = []
    for key in KEYS:
        ops = sorted((op for op in history if op.key == key), key=lambda o: o.start)
        last_acked: str | None = None
        failed: set[str | None] = set()
        for op in ops:
            if op.kind == "get":
                if op.ok and op.value != last_acked and op.value not in failed:
                    errors.append(
                        f"read of {key} at t={op.start:.3f} via {op.node} returned {op.value!r};"
                        f" the last acknowledged write was {last_acked!r}"
                    )
                continue
            if op.ok:
                last_acked = op.value
            else:
                failed.add(op.value)
    return errors


class _Cluster:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.stores: dict[str, KVStore] = {}
        self.config = PeerRingConfig(replication=3, quorum=2, partitions=32)

    async def start(self, address: str) -> None:
        sim = self.sim
        store = KVStore(
            FixedDiscovery(address, sim.addresses),
            replication=3,
            quorum=2,
            # The workload sets no TTLs: one expiry round a second is plenty.
            expiry_interval=1.0,
            config=self.config,
            transport=sim.transport(address),
            clock=sim.node_clock(address),
        )
        await store.start()
        self.stores[address] = store

    async def crash(self, address: str) -> None:
        store = self.stores.pop(address)
        # The node first (abrupt, no hand-off), then the store's own tasks.
        await store.node.stop()
        await store.stop()


async def _client(
    sim: Simulation, cluster: _Cluster, key: str, until: float, out: list[Op]
) -> None:
    rng = sim.rng
    n = 0
    while sim.clock.monotonic() < until:
        await sim.clock.sleep(rng.uniform(0.01, 0.5))
        alive = sorted(cluster.stores)
        if not alive:
            continue
        address = rng.choice(alive)
        store = cluster.stores[address]
        roll = rng.random()
        if roll < 0.6:
            n += 1
            op = Op("set", key, f"{key}={n}", address, sim.clock.monotonic())
        elif roll < 0.75:
            op = Op("delete", key, None, address, sim.clock.monotonic())
        else:
            op = Op("get", key, None, address, sim.clock.monotonic())
        await _perform(sim, store, op)
        out.append(op)


async def _perform(sim: Simulation, store: KVStore, op: Op) -> None:
    try:
        if op.kind == "set":
            await store.set(op.key, op.value.encode() if op.value else b"", quorum=2)
        elif op.kind == "delete":
            await store.delete(op.key, quorum=2)
        else:
            raw = await store.get(op.key, quorum=2)
            op.value = None if raw is None else bytes(raw).decode()
        op.ok = True
    except Exception as exc:  # any failure of an operation is part of the history
        op.error = f"{type(exc).__name__}: {exc}"
    op.end = sim.clock.monotonic()
    sim.log(
        f"{op.kind} {op.key} {op.value!r} via {op.node} "
        + ("ok" if op.ok else f"FAILED {op.error[:80]}")
    )


def run_seed(seed: int, config: SimConfig | None = None) -> SimResult:
    """Run one seed of the KV workload and check it (see the module docs)."""
    sim = Simulation(seed, config)
    result = SimResult(seed)

    async def main() -> None:
        cluster = _Cluster(sim)
        for address in sim.addresses:
            await cluster.start(address)
        until = sim.config.duration
        history = result.history
        try:
            await asyncio.gather(
                *(_client(sim, cluster, key, until, history) for key in KEYS),
                sim.nemesis(cluster.crash, cluster.start, until),
            )
            await sim.clock.sleep(SETTLE)
            for key in KEYS:
                # A client retries: with lossy links two of three replies can be lost.
                for _ in range(FINAL_READ_ATTEMPTS):
                    address = sim.rng.choice(sorted(cluster.stores))
                    op = Op("get", key, None, address, sim.clock.monotonic())
                    await _perform(sim, cluster.stores[address], op)
                    history.append(op)
                    if op.ok:
                        break
                    await sim.clock.sleep(1.0)
                else:
                    result.errors.append(f"final read of {key} failed: {op.error}")
        finally:
            for store in list(cluster.stores.values()):
                with contextlib.suppress(Exception):
                    await store.node.stop()
                    await store.stop()

    sim.run(main())
    result.errors.extend(check(result.history))
    result.trace = sim.trace
    return result


if __name__ == "__main__":
    import sys

    from peer_ring.kv._sim_cli import main as _main

    sys.exit(_main())
