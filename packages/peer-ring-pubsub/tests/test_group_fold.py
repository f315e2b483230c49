"""A group delta made while its partition's APPEND is about to leave rides on that APPEND."""

from __future__ import annotations

import asyncio
from typing import Any

from peer_ring.pubsub._group import GroupState
from peer_ring.pubsub._wire import OutgoingMessage, ring_key


async def test_a_group_delta_rides_on_the_append_leaving_in_the_same_turn(cluster) -> None:
    nodes = await cluster.start(3)
    topic = nodes[0].topic("fold", partitions=1)
    seq = cluster.nodes[topic.sequencer(0)]
    await seq.topic("fold", partitions=1).publish(b"first")  # the takeover is done
    key = ring_key("fold", 0)
    leaders = seq.leaders
    leader = leaders.leaders[key]
    sent: list[str] = []
    real_execute, real_many = seq.node.execute, seq.node.execute_many

    async def execute(namespace: str, command: Any, *a: Any, **k: Any) -> Any:
        sent.append(command.name)
        return await real_execute(namespace, command, *a, **k)

    async def execute_many(namespace: str, command: Any, *a: Any, **k: Any) -> Any:
        sent.append(command.name)
        return await real_many(namespace, command, *a, **k)

    seq.node.execute, seq.node.execute_many = execute, execute_many  # type: ignore[method-assign]
    publish = asyncio.ensure_future(
        leaders.publish(key, leader.config, [OutgoingMessage(b"second", b"", "")])
    )
    await asyncio.sleep(0)  # the publish ran: its APPEND waits in the outbox for the turn's end
    wait = leaders.replicate_group_begin(leader, "g", GroupState(floor=2, next=2))
    assert wait is not None and leaders.folded == 1
    await wait
    [(entry, _)] = await publish
    assert entry.seq == 1
    assert sent == ["append"]  # no GROUP request: the delta travelled with the entry
    holders = [
        ps
        for ps in cluster.nodes.values()
        if (state := ps.store.get(key)) is not None
        and "g" in state.groups
        and state.groups["g"].floor == 2
        and 1 in state.log.entries
    ]
    assert len(holders) >= 2  # on W replicas together with the entry


async def test_without_an_append_leaving_a_delta_goes_on_its_own(cluster) -> None:
    nodes = await cluster.start(3)
    topic = nodes[0].topic("fold", partitions=1)
    seq = cluster.nodes[topic.sequencer(0)]
    await seq.topic("fold", partitions=1).publish(b"first")
    leader = seq.leaders.leaders[ring_key("fold", 0)]
    wait = seq.leaders.replicate_group_begin(leader, "g", GroupState(floor=1, next=1))
    assert wait is not None
    await wait
    assert seq.leaders.folded == 0
