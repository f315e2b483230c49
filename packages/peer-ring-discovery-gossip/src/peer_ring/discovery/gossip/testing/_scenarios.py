"""The measured scenarios of the README, reusable by tests (which assert on them) and by
``python -m peer_ring.discovery.gossip.testing`` (which prints the figures).

Every scenario is deterministic for a given seed: it builds a :class:`Simulation`, applies a
fault, runs virtual time and reads the event log.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from peer_ring.discovery.gossip._config import GossipConfig
from peer_ring.discovery.gossip._outputs import EventKind
from peer_ring.discovery.gossip.testing._simulation import Simulation


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _seen_everywhere(sim: Simulation, name: str, kind: EventKind, since: float) -> float | None:
    """Seconds from ``since`` until every running node (but ``name``) saw ``kind``."""
    first: dict[str, float] = {}
    for e in sim.events:
        if e.time >= since and e.event.name == name and e.event.kind == kind:
            first.setdefault(e.observer, e.time - since)
    observers = [n.name for n in sim.up_nodes() if n.name != name]
    if any(o not in first for o in observers):
        return None
    return max(first[o] for o in observers)


@dataclass(frozen=True, slots=True)
class Detection:
    """Seconds until a killed node was declared dead in every view, one value per kill
    (``inf`` when some view never did within the run)."""

    times: list[float]

    @property
    def median(self) -> float:
        """Median over the kills."""
        return statistics.median(self.times)

    @property
    def p99(self) -> float:
        """99th percentile over the kills."""
        return percentile(self.times, 0.99)


def detection(
    members: int, kills: int, seed: int = 1, config: GossipConfig | None = None, wait: float = 40.0
) -> Detection:
    """Kill ``kills`` nodes one after another in a cluster of ``members`` and time each."""
    sim = Simulation(seed, config)
    sim.add_cluster(members, settle=5.0, formed=True)
    times = []
    for i in range(kills):
        victim = Simulation.name_of(1 + (i * 37) % (members - 1))
        start = sim.now
        sim.kill(victim)
        sim.run_for(wait)
        took = _seen_everywhere(sim, victim, EventKind.DIED, start)
        times.append(float("inf") if took is None else took)
        # Bring it back, so the cluster size stays the same for the next kill.
        sim.add_node(1 + (i * 37) % (members - 1), seeds=[Simulation.addr_of(0)])
        sim.run_for(5.0)
    return Detection(times)


def leave_times(members: int, leaves: int, seed: int = 2) -> list[float]:
    """Seconds until a graceful leave is seen by every other node, one value per leave."""
    sim = Simulation(seed)
    sim.add_cluster(members, settle=5.0, formed=True)
    out = []
    for i in range(leaves):
        index = 1 + (i * 41) % (members - 1)
        name = Simulation.name_of(index)
        start = sim.now
        sim.leave(name)
        sim.run_for(5.0)
        took = _seen_everywhere(sim, name, EventKind.LEFT, start)
        out.append(float("inf") if took is None else took)
        sim.kill(name)
        sim.add_node(index, seeds=[Simulation.addr_of(0)])
        sim.run_for(5.0)
    return out


@dataclass(frozen=True, slots=True)
class FalseAlarms:
    """What a run without real failures produced."""

    suspicions: int  # suspicions raised (by the accuser) about healthy members
    deaths: int  # healthy members declared dead, counted once per member and observer
    refutations: int
    converged: bool


def lossy_run(members: int, loss: float, seconds: float, seed: int = 3) -> FalseAlarms:
    """Run a healthy cluster on a network losing ``loss`` of all UDP packets."""
    sim = Simulation(seed, loss=loss)
    sim.add_cluster(members, settle=1.0, formed=True)
    start = len(sim.events)
    sim.run_for(seconds)
    events = sim.events[start:]
    suspicions = sum(
        1 for e in events if e.event.kind == EventKind.SUSPECTED and e.observer == e.event.source
    )
    deaths = sum(1 for e in events if e.event.kind == EventKind.DIED)
    sim.network.loss = 0.0
    sim.run_for(30.0)
    return FalseAlarms(
        suspicions, deaths, sum(n.swim.refutations for n in sim.nodes.values()), sim.converged()
    )


def starved_run(
    members: int, max_lag: float, seconds: float, lifeguard: bool, seed: int = 4
) -> FalseAlarms:
    """One member handles every timer and packet up to ``max_lag`` s late (CPU starvation);
    count the suspicions and deaths of the *other*, healthy members."""
    sim = Simulation(seed, GossipConfig.lan(lifeguard=lifeguard))
    sim.add_cluster(members, settle=1.0, formed=True)
    starved = Simulation.name_of(members // 2)
    sim.starve(starved, max_lag)
    start = len(sim.events)
    sim.run_for(seconds)
    events = [e for e in sim.events[start:] if e.event.name != starved]
    suspicions = sum(
        1 for e in events if e.event.kind == EventKind.SUSPECTED and e.observer == e.event.source
    )
    deaths = sum(1 for e in events if e.event.kind == EventKind.DIED)
    healthy = {m.name for m in sim.up_nodes()} - {starved}
    return FalseAlarms(
        suspicions,
        deaths,
        sum(n.swim.refutations for n in sim.nodes.values()),
        all(sim.view(n.name) >= healthy for n in sim.up_nodes()),
    )


@dataclass(frozen=True, slots=True)
class Traffic:
    """Per-node traffic of an idle cluster (UDP datagrams plus TCP segments; bytes with
    IP/UDP/TCP headers)."""

    packets_per_second: float
    bytes_per_second: float
    max_packets_per_second: float
    max_bytes_per_second: float


def idle_traffic(members: int, seconds: float, seed: int = 5) -> Traffic:
    """Traffic of a healthy, idle cluster over ``seconds``."""
    sim = Simulation(seed)
    sim.add_cluster(members, settle=5.0, formed=True)
    before = {n.name: (n.packets_sent, n.bytes_sent) for n in sim.nodes.values()}
    sim.run_for(seconds)
    packets = [(n.packets_sent - before[n.name][0]) / seconds for n in sim.nodes.values()]
    sizes = [(n.bytes_sent - before[n.name][1]) / seconds for n in sim.nodes.values()]
    return Traffic(statistics.mean(packets), statistics.mean(sizes), max(packets), max(sizes))


def rejoin_times(members: int, restarts: int, seed: int = 6, down: float = 2.0) -> list[float]:
    """A node killed and restarted ``down`` s later on the same address: seconds from the
    restart until every other view holds it alive at its new incarnation."""
    sim = Simulation(seed)
    sim.add_cluster(members, settle=5.0, formed=True)
    out = []
    for i in range(restarts):
        index = 1 + (i * 29) % (members - 1)
        name = Simulation.name_of(index)
        sim.kill(name)
        sim.run_for(down)
        node = sim.add_node(index, seeds=[Simulation.addr_of(0)])
        start = sim.now
        incarnation = node.swim.me.incarnation

        def rejoined(name: str = name, incarnation: int = incarnation) -> bool:
            for other in sim.up_nodes():
                state = other.swim.nodes.get(name)
                if state is None or state.incarnation < incarnation or state.status != 0:
                    return False
            return True

        done = sim.run_until(start + 30.0, rejoined)
        out.append(sim.now - start if done else float("inf"))
        sim.run_for(30.0)
    return out
