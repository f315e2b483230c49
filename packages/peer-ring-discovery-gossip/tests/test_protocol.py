"""The pure protocol on the simulator: joins, refutation, partitions, clusters, keys."""

from __future__ import annotations

import os

from peer_ring.discovery.gossip import EventKind, GossipConfig, Keyring, Status
from peer_ring.discovery.gossip._messages import Alive
from peer_ring.discovery.gossip.testing import Simulation
from peer_ring.discovery.gossip.testing._scenarios import rejoin_times

N = Simulation.name_of
A = Simulation.addr_of


def test_nodes_join_through_one_seed_and_converge() -> None:
    sim = Simulation(seed=11)
    sim.add_cluster(30, settle=0.0)
    assert sim.run_until(20.0, sim.converged)
    assert sim.now < 5.0


def test_same_seed_same_run() -> None:
    def run() -> list[tuple[float, str, str, str]]:
        sim = Simulation(seed=5, loss=0.05)
        sim.add_cluster(12, settle=10.0)
        sim.kill(N(3))
        sim.run_for(20.0)
        return [(e.time, e.observer, e.event.kind.value, e.event.name) for e in sim.events]

    assert run() == run()


def test_metadata_travels_and_updates() -> None:
    sim = Simulation(seed=2)
    first = sim.add_node(0, meta={"zone": "a"})
    sim.add_node(1, seeds=[first.addr], meta={"zone": "b"})
    sim.run_for(2.0)
    view = {s.name: dict(s.meta) for s in sim.nodes[N(0)].swim.live_members()}
    assert view == {N(0): {"zone": "a"}, N(1): {"zone": "b"}}
    node = sim.nodes[N(1)]
    node.swim.update_meta(sim.now, {"zone": "c"})
    sim._after(node)
    sim.run_for(1.0)
    assert dict(sim.nodes[N(0)].swim.nodes[N(1)].meta) == {"zone": "c"}


def test_a_suspected_node_refutes_and_is_never_declared_dead() -> None:
    sim = Simulation(seed=4)  # a seed where a probe hits the victim while it is cut off
    sim.add_cluster(20, settle=5.0, formed=True)
    victim = sim.nodes[N(4)]
    # Cut the victim off for 2 s: probes of it fail and it is suspected (first after about
    # a second); back on the network it hears of it (gossip, or the buddy system's ping)
    # and refutes well before the minimum suspicion timeout (3.9 s for 20 members).
    sim.network.partition([victim.addr])
    sim.run_for(2.0)
    sim.network.heal()
    sim.run_for(20.0)
    kinds = [e.event.kind for e in sim.events if e.event.name == victim.name]
    assert EventKind.SUSPECTED in kinds
    assert EventKind.DIED not in kinds
    assert victim.swim.refutations >= 1
    assert sim.converged()


def test_a_killed_node_is_declared_dead_everywhere() -> None:
    sim = Simulation(seed=4)
    sim.add_cluster(20, settle=5.0, formed=True)
    sim.kill(N(7))
    sim.run_for(30.0)
    died = {
        e.observer for e in sim.events if e.event.name == N(7) and e.event.kind == EventKind.DIED
    }
    assert died == {n.name for n in sim.up_nodes()}
    assert sim.converged()


def test_a_healed_partition_merges_back() -> None:
    sim = Simulation(seed=6, config=GossipConfig.lan(push_pull_interval=10.0))
    first = sim.add_node(0)
    other = sim.add_node(5, seeds=[first.addr])
    for i in (1, 2, 3, 4, 6, 7, 8, 9):
        sim.add_node(i, seeds=[first.addr, other.addr])
    sim.run_for(5.0)
    assert sim.converged()
    left = [A(i) for i in range(5)]
    sim.network.partition(left, [A(i) for i in range(5, 10)])
    sim.run_for(90.0)
    assert sim.view(N(0)) == {N(i) for i in range(5)}
    assert sim.view(N(9)) == {N(i) for i in range(5, 10)}
    sim.network.heal()
    assert sim.run_until(sim.now + 120.0, sim.converged)


def test_two_clusters_on_one_network_never_merge() -> None:
    sim = Simulation(seed=7)
    blue = GossipConfig.lan(cluster="blue")
    green = GossipConfig.lan(cluster="green")
    sim.add_node(0, config=blue)
    sim.add_node(1, config=blue, seeds=[A(0)])
    sim.add_node(2, config=green, seeds=[A(0)])  # a green node pointed at a blue seed
    sim.add_node(3, config=green, seeds=[A(2)])
    sim.run_for(30.0)
    assert sim.view(N(0)) == sim.view(N(1)) == {N(0), N(1)}
    assert sim.view(N(2)) == sim.view(N(3)) == {N(2), N(3)}
    assert (
        sim.nodes[N(0)].bad_packets["wrong_cluster"] + sim.nodes[N(2)].bad_packets["wrong_cluster"]
        > 0
        or sim.nodes[N(2)].swim.joined is False
    )


def test_encrypted_cluster_keeps_a_node_with_the_wrong_key_out() -> None:
    good, bad = os.urandom(32), os.urandom(32)
    sim = Simulation(seed=8, keyring_factory=lambda name: Keyring(bad if name == N(3) else good))
    sim.add_node(0)
    for i in (1, 2, 3):
        sim.add_node(i, seeds=[A(0)])
    sim.run_for(20.0)
    assert sim.view(N(0)) == {N(0), N(1), N(2)}
    assert sim.view(N(3)) == {N(3)}


def test_bad_packets_are_dropped_and_counted() -> None:
    sim = Simulation(seed=9)
    sim.add_cluster(3, settle=2.0)
    node = sim.nodes[N(0)]
    for data in (
        b"",
        b"\xa7g",
        b"\xa7g\x01\x00\x09peer-ring\x01\x00",
        os.urandom(300),
        b"\xa7g\x01\x00\x05other" + os.urandom(20),
        b"x" * 70_000,
    ):
        sim.inject(node.addr, data)
    sim.run_for(2.0)
    assert sum(node.bad_packets.values()) == 6
    assert set(node.bad_packets) >= {"truncated", "wrong_cluster", "too_large"}
    assert sim.converged()


def test_a_restarted_node_is_alive_again_within_a_second() -> None:
    times = rejoin_times(40, 3)
    assert max(times) < 2.0, times


def test_a_left_node_is_marked_left_not_dead() -> None:
    sim = Simulation(seed=10)
    sim.add_cluster(10, settle=3.0, formed=True)
    sim.leave(N(2))
    sim.run_for(1.0)
    for node in sim.up_nodes():
        if node.name != N(2):
            assert node.swim.nodes[N(2)].status == Status.LEFT
    assert not [e for e in sim.events if e.event.kind == EventKind.DIED]


def test_an_oversized_announcement_is_ignored() -> None:
    sim = Simulation(seed=12)
    sim.add_cluster(3, settle=2.0)
    swim = sim.nodes[N(0)].swim
    swim.on_alive(sim.now, Alive("intruder:1", 1, ("10.9.9.9", 1), {"k": "v" * 1000}))
    assert "intruder:1" not in swim.nodes
    assert len(swim.broadcasts) == 0 or swim.broadcasts.pending("intruder:1") is None


def test_tcp_fallback_keeps_a_member_whose_udp_is_blocked() -> None:
    def run(tcp_fallback: bool) -> list[EventKind]:
        sim = Simulation(seed=13, config=GossipConfig.lan(tcp_fallback=tcp_fallback))
        sim.add_cluster(10, settle=3.0, formed=True)
        sim.network.block_udp(A(3))
        sim.run_for(60.0)
        return [e.event.kind for e in sim.events if e.event.name == N(3)]

    assert EventKind.DIED in run(tcp_fallback=False)
    kinds = run(tcp_fallback=True)
    assert EventKind.SUSPECTED not in kinds and EventKind.DIED not in kinds


def test_late_timers_raise_the_health_score() -> None:
    sim = Simulation(seed=14)
    sim.add_cluster(5, settle=3.0, formed=True)
    swim = sim.nodes[N(1)].swim
    assert swim.awareness.score == 0
    # The node's timers run 2 s late (a paused or starved process), once.
    deadline = swim.next_deadline()
    assert deadline is not None
    swim.tick(deadline + 2.0)
    assert swim.late_timers == 1 and swim.awareness.score >= 1
