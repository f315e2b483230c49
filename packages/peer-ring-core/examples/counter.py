"""A tiny replicated counter built on the public peer-ring contract ("Writing an application").

Run:  python packages/peer-ring-core/examples/counter.py [base_port]

Three nodes in one process over real gRPC on loopback count page views; one node stops and
the counts survive. The tests (``tests/test_example_counter.py``) run the same application
on the in-memory network with a fake clock.

How it works. Each counter is a *G-counter*: a map ``{node address: count}`` whose value is
the sum of its slots. A node only ever increments its own slot, and replicas merge slot
maps by taking the maximum of each slot, so a merge is idempotent and order-free: merged
twice, late or after a newer state, it changes nothing wrong. That is what lets the core
store the merge as a hint for a replica that is down and replay it later.

* ``add`` asks the key's primary replica (:meth:`PeerRing.call`; the next replica when it
  is unreachable) to run ``ADD``: the primary increments its own slot and replicates the
  whole slot map with ``MERGE`` to the key's replicas (:meth:`PeerRing.execute`, write
  quorum).
* ``get`` / ``get_many`` read the slot maps of a read quorum of replicas
  (``execute`` / ``execute_many``) and merge them.
* The data hooks export, merge, drop and digest slot maps, so the core moves counters when
  nodes join, leave or die, and repairs replicas that missed a merge.
* The ownership listener keeps the set of partitions this node heads (state outside the
  hooks: here only reported by ``stats()``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import Collection, Iterable, Sequence

from peer_ring.core import (
    DIGEST_BUCKETS,
    Command,
    CommandContext,
    OwnershipChange,
    PeerRing,
    PeerRingConfig,
    PeerRingError,
    bucket_for_key,
)

NAMESPACE = "counter"

#: Runs on the primary: increments its slot, then replicates. It reads (it must not run on
#: a replica still pulling the key: its slot would restart from zero) and mutates, but is
#: not idempotent, so it is never stored as a hint (``hinted=False``).
ADD = Command("add", reads=True, mutates=True, hinted=False)
#: Merges a slot map into a replica: idempotent, so hinted (sloppy quorum, hinted handoff).
MERGE = Command("merge", mutates=True)
#: Returns a replica's slot map.
GET = Command("get", reads=True)

Slots = dict[str, int]


def encode(slots: Slots) -> bytes:
    return json.dumps(slots, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes) -> Slots:
    return {str(k): int(v) for k, v in json.loads(data or b"{}").items()}


def merge_into(target: Slots, other: Slots) -> None:
    for origin, count in other.items():
        if count > target.get(origin, 0):
            target[origin] = count


class Counter:
    """The counter application on one node.

    Args:
        node: a :class:`PeerRing` that is not started yet (it may host other applications).
        quorum: read and write quorum (default: the node's).
    """

    def __init__(self, node: PeerRing, *, quorum: int | None = None) -> None:
        self.node = node
        self.quorum = quorum
        self.data: dict[bytes, Slots] = {}
        self.primary_partitions: set[int] = set()
        node.register(NAMESPACE, ADD, self._h_add)
        node.register(NAMESPACE, MERGE, self._h_merge)
        node.register(NAMESPACE, GET, self._h_get)
        node.register_hooks(NAMESPACE, self)
        node.add_ownership_listener(self._on_ownership)

    # -- client API ----------------------------------------------------------------------

    async def add(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` (>= 0) to ``key``; returns the count its primary then knew."""
        if delta < 0:
            raise ValueError("a G-counter only grows")
        error: PeerRingError | None = None
        for replica in self.node.preference_list(key):
            try:
                return int(await self.node.call(replica, NAMESPACE, ADD, key, b"%d" % delta))
            except PeerRingError as err:  # unreachable or still pulling: the next replica
                error = err
        assert error is not None
        raise error

    async def get(self, key: str) -> int:
        """The count of ``key`` (0 when it was never added to)."""
        result = await self.node.execute(NAMESPACE, GET, key, quorum=self.quorum)
        return _total(result.payloads)

    async def get_many(self, keys: Iterable[str]) -> dict[str, int]:
        """Counts of several keys: one request per replica node, a read quorum per key."""
        key_list = list(keys)
        results = await self.node.execute_many(
            NAMESPACE, GET, [(k, b"") for k in key_list], quorum=self.quorum
        )
        out: dict[str, int] = {}
        for key, result in zip(key_list, results, strict=True):
            if result.error is not None:
                raise result.error
            out[key] = _total(result.payloads)
        return out

    def stats(self) -> dict[str, int]:
        """Local figures: counters stored here and partitions this node heads."""
        return {"counters": len(self.data), "primary_partitions": len(self.primary_partitions)}

    # -- handlers ------------------------------------------------------------------------

    async def _h_add(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        slots = self.data.setdefault(key, {})
        me = self.node.address
        slots[me] = slots.get(me, 0) + int(payload)
        snapshot = dict(slots)  # this increment's state; later ones only grow it
        await self.node.execute(NAMESPACE, MERGE, key, encode(snapshot), quorum=self.quorum)
        return b"%d" % sum(snapshot.values())

    def _h_merge(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        merge_into(self.data.setdefault(key, {}), decode(payload))
        return b""

    def _h_get(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        return encode(self.data.get(key, {}))

    def _on_ownership(self, change: OwnershipChange) -> None:
        self.primary_partitions |= change.primary_gained
        self.primary_partitions -= change.primary_lost

    # -- data hooks (records: 2-byte key length, key, slot map) -----------------------------

    def _partition(self, key: bytes) -> int:
        return self.node.partition_for_key(key)

    def export_partition(
        self, partition: int, buckets: Collection[int] | None = None
    ) -> Iterable[bytes]:
        for key, slots in list(self.data.items()):
            if self._partition(key) != partition:
                continue
            if buckets is not None and bucket_for_key(key) not in buckets:
                continue
            yield len(key).to_bytes(2, "big") + key + encode(slots)

    def apply_records(self, partition: int, records: Sequence[bytes]) -> None:
        for record in records:
            size = int.from_bytes(record[:2], "big")
            key = record[2 : 2 + size]
            merge_into(self.data.setdefault(key, {}), decode(record[2 + size :]))

    def drop_partition(self, partition: int) -> None:
        for key in [k for k in self.data if self._partition(k) == partition]:
            del self.data[key]

    def digest_partition(self, partition: int) -> Sequence[bytes]:
        hashes = [hashlib.blake2b(digest_size=16) for _ in range(DIGEST_BUCKETS)]
        used = [False] * DIGEST_BUCKETS
        for key in sorted(k for k in self.data if self._partition(k) == partition):
            bucket = bucket_for_key(key)
            hashes[bucket].update(len(key).to_bytes(2, "big") + key + encode(self.data[key]))
            used[bucket] = True
        return [h.digest() if u else b"" for h, u in zip(hashes, used, strict=True)]


def _total(payloads: list[bytes]) -> int:
    slots: Slots = {}
    for payload in payloads:
        merge_into(slots, decode(payload))
    return sum(slots.values())


async def main(base_port: int) -> None:
    from peer_ring.discovery.static import StaticDiscovery

    peers = [f"127.0.0.1:{base_port + i}" for i in range(3)]
    config = PeerRingConfig(replication=3, quorum=2, down_after=None)
    counters = [
        Counter(PeerRing(StaticDiscovery(peers, self_address=p), config=config)) for p in peers
    ]
    for counter in counters:
        await counter.node.start()
    try:
        for counter in counters:
            # Ready once each partition was pulled or found new everywhere: seconds at most
            # on a quiet machine, but by design up to sync_give_up_after when holders answer
            # late (peers still starting, a loaded machine): that is the bound.
            await counter.node.wait_ready(config.sync_give_up_after)
        for i, counter in enumerate(counters):  # every node counts some views
            await counter.add("page:/", 1 + i)
            await counter.add("page:/about")
        print("counts:", await counters[0].get_many(["page:/", "page:/about", "page:/new"]))
        await counters[2].node.stop()  # one node goes away; N=3, W=R=2 still works
        await counters[0].add("page:/", 10)
        print("after a node stopped:", await counters[1].get("page:/"))
        print("node 0:", counters[0].stats())
    finally:
        for counter in counters:
            await counter.node.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7111))
