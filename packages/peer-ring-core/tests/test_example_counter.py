"""The "Writing an application" example (examples/counter.py) on the in-memory network, and
its demo over real gRPC."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from peer_ring.core import PeerRingConfig, PeerUnavailableError, QuorumNotReachedError

EXAMPLE = Path(__file__).parents[1] / "examples" / "counter.py"
ADDRS = [f"127.0.0.{i}:7101" for i in range(1, 5)]
CONFIG = PeerRingConfig(
    partitions=32,
    replication=3,
    quorum=2,
    request_timeout=1.0,
    probe_interval=0.5,
    probe_timeout=0.5,
    suspicion_timeout=2.0,
    down_after=3.0,
    handoff_delay=0.5,
    sync_retry_initial=0.2,
    sync_retry_max=1.0,
    anti_entropy_interval=None,
)


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("counter_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass/typing lookups need the module registered
    spec.loader.exec_module(module)
    return module


counter_example = load_example()


#: ``app_cluster(...)``: an ``AppCluster`` of conftest.py.
Cluster = Any


@pytest.fixture
def cluster(app_cluster: Callable[..., Cluster]) -> Cluster:
    """Nodes on one in-memory network, each running the example's ``Counter`` (which
    registers its own commands and hooks on the node it is given)."""
    return app_cluster(CONFIG, counter_example.Counter, {})


async def start(cluster: Cluster, peers: list[str]) -> list[Any]:
    """Start a node per address of ``peers``, wait until all are ready; their counters."""
    await cluster.start_ready(peers)
    return [cluster.apps[address] for address in peers]


async def test_counts_from_every_node_add_up(cluster: Cluster) -> None:
    counters = await start(cluster, ADDRS[:3])
    for i, counter in enumerate(counters):
        for _ in range(5):
            await counter.add("views", i + 1)
    assert await counters[0].get("views") == 5 * (1 + 2 + 3)
    assert await counters[2].get_many(["views", "never"]) == {"views": 30, "never": 0}
    # only the primary's slot grew: every add ran there
    primary = counters[0].node.preference_list("views")[0]
    stored = cluster.apps[primary].data[b"views"]
    assert stored == {primary: 30}
    with pytest.raises(ValueError, match="only grows"):
        await counters[0].add("views", -1)


async def test_counts_survive_losing_two_of_four_nodes(cluster: Cluster) -> None:
    counters = await start(cluster, ADDRS)
    keys = [f"page:{i}" for i in range(20)]
    for i, key in enumerate(keys):
        await counters[i % 4].add(key, i + 1)
    expected = {key: i + 1 for i, key in enumerate(keys)}
    survivors = counters[:2]
    for lost in counters[2:]:  # crash one node, wait for the others to re-replicate
        await lost.node.stop()
        await cluster.until(
            lambda: all(
                len(c.node.ring) == sum(x.node.running for x in counters)
                and c.node.sync_status()["partitions"]["pending"] == 0
                for c in survivors
            )
        )
    assert await survivors[0].get_many(keys) == expected
    # each survivor now holds every counter (replication 3 over 2 nodes)
    assert all(c.stats()["counters"] == len(keys) for c in survivors)
    await survivors[1].add(keys[0], 100)
    assert await survivors[0].get(keys[0]) == 101


async def test_add_goes_to_the_next_replica_when_the_primary_is_unreachable(
    cluster: Cluster,
) -> None:
    counters = await start(cluster, ADDRS[:3])
    a = counters[0]
    key = next(f"k{i}" for i in range(100) if a.node.preference_list(f"k{i}")[0] != a.node.address)
    primary = a.node.preference_list(key)[0]
    await a.add(key, 2)
    cluster.network.cut(a.node.address, primary)
    assert await a.add(key, 3) == 5  # the second replica merged the primary's slot first
    cluster.network.heal()
    assert await cluster.apps[primary].get(key) == 5


async def test_an_add_that_no_replica_can_replicate_fails(cluster: Cluster) -> None:
    counters = await start(cluster, ADDRS[:3])
    a = counters[0]
    for other in ADDRS[1:3]:
        cluster.network.cut(a.node.address, other)
    key = next(f"k{i}" for i in range(100) if a.node.preference_list(f"k{i}")[0] == a.node.address)
    # the primary (a) cannot reach a write quorum, the other replicas cannot be reached
    with pytest.raises(PeerUnavailableError):
        await a.add(key)
    with pytest.raises(QuorumNotReachedError):
        await a.get(key)


async def test_the_ownership_listener_tracks_primary_partitions(cluster: Cluster) -> None:
    counters = await start(cluster, ADDRS[:3])
    for counter in counters:
        node = counter.node
        assert counter.primary_partitions == node.ring.partitions_of(node.address, 1)
    assert sum(c.stats()["primary_partitions"] for c in counters) == CONFIG.partitions


def test_the_demo_runs_over_grpc(run_example: Callable[..., str]) -> None:
    # The example binds port, port + 1, port + 2. It waits up to sync_give_up_after (60 s)
    # for the nodes to be ready (seconds at most, unless the machine is loaded; over 10 s
    # once at load 20): the process gets that and the demo's own requests.
    out = run_example(EXAMPLE, 3, timeout=PeerRingConfig().sync_give_up_after + 60)
    assert "counts: {'page:/': 6, 'page:/about': 3, 'page:/new': 0}" in out
    assert "after a node stopped: 16" in out


def test_the_readme_documents_every_public_name() -> None:
    import peer_ring.core

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    missing = [n for n in peer_ring.core.__all__ if n != "__version__" and f"`{n}" not in readme]
    assert not missing, f"not documented in the core README: {missing}"
