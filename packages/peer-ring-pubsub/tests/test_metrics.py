"""Prometheus metrics of pub-sub (peer_ring.pubsub.metrics): the node's counters and its
subscriptions' health, read at scrape time, next to the core's collector."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from peer_ring.core.metrics import register_metrics as register_node_metrics
from peer_ring.pubsub.metrics import register_metrics


def scrape(registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_published_sequenced_and_subscription_figures(cluster) -> None:
    a, b, _ = await cluster.start(3)
    registry_a = register_metrics(a)
    registry_b = register_metrics(b)
    topic = a.topic("jobs", partitions=4)
    for i in range(12):
        await topic.publish(b"job%d" % i, key=f"k{i}")
    async with b.topic("jobs", partitions=4).subscribe(group="workers") as sub:
        for _ in range(5):
            msg = await sub.next(timeout=30)
            assert msg is not None
            await msg.ack()
        m = scrape(registry_b)
        (labels,) = [k[1] for k in m if k[0] == "peer_ring_pubsub_subscription_acked_total"]
        assert dict(labels)["group"] == "workers" and dict(labels)["topic"] == "jobs"
        assert m[("peer_ring_pubsub_subscription_acked_total", labels)] == 5.0
        assert m[("peer_ring_pubsub_subscription_delivered_total", labels)] >= 5.0
        assert m[("peer_ring_pubsub_subscription_stalled", labels)] == 0.0
    m = scrape(registry_a)
    assert m[("peer_ring_pubsub_published_total", ())] == 12.0
    assert m[("peer_ring_pubsub_stalled_subscriptions", ())] == 0.0
    sequencing = sum(
        scrape(r)[("peer_ring_pubsub_sequencing", ())] for r in (registry_a, registry_b)
    )
    assert sequencing == a.metrics()["sequencing"] + b.metrics()["sequencing"]
    # the node's core metrics are on the same registry
    assert m[("peer_ring_members", ())] == 3.0
    assert m[("peer_ring_node_ready", ())] == 1.0


async def test_a_shared_node_registry_gets_only_the_pubsub_series(cluster) -> None:
    a, _, _ = await cluster.start(3)
    registry = register_node_metrics(a.node)
    register_metrics(a, registry, include_node=False)
    text = generate_latest(registry).decode()
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(families) == len(set(families))
    assert "peer_ring_pubsub_published_total 0.0" in text and "peer_ring_members 3.0" in text
