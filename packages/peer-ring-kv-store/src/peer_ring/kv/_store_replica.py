"""The replica side of :class:`~peer_ring.kv.KVStore`: its commands and their handlers.

What a node does when a coordinator (itself or a peer) sends it a write or a read of a key it
replicates: store the record (or refuse it for a higher version it holds) and answer a read
from the stored bytes. :class:`KVStore` inherits these methods, so the core calls them as
before (the handlers are bound methods of the store, registered once).
"""

from __future__ import annotations

from collections.abc import Callable

from peer_ring.core import Command, CommandContext, PartitionNotReadyError
from peer_ring.kv._hooks import KVHooks
from peer_ring.kv._ordered import refusal
from peer_ring.kv._record import Record
from peer_ring.kv._store_base import KVStoreBase
from peer_ring.kv._wire import decode_entries, decode_keys, decode_record, encode_optional_records

#: The core namespace the store's commands and data-movement hooks live in.
NAMESPACE = "kv"

# The declarations tell the core what may be hinted (idempotent LWW writes) and what must
# not be answered by a replica that is still pulling the partition (reads).
SET = Command("set", mutates=True)
GET = Command("get", reads=True)
# Batches of older versions (one request per node, with all its keys); this version sends
# SET/GET through ``execute_many`` and keeps these handlers for mixed-version clusters.
MSET = Command("mset", mutates=True)
MGET = Command("mget", reads=True)


class KVReplicaMixin(KVStoreBase):
    """The replica-side handlers; :class:`~peer_ring.kv.KVStore` provides the attributes."""

    _hooks: KVHooks
    _hlc_observe: Callable[[int, int, str], None]

    def _register(self) -> None:
        node = self._node
        # Kinds tell the core what may be hinted (idempotent LWW writes) and what must not
        # be answered by a replica that is still pulling the partition (reads).
        node.register(NAMESPACE, SET, self._h_set)
        node.register(NAMESPACE, GET, self._h_get)
        node.register(NAMESPACE, MSET, self._h_mset)
        node.register(NAMESPACE, MGET, self._h_mget)
        node.register_hooks(NAMESPACE, self._hooks)
        self._register_ops(NAMESPACE)

    def _observe(self, record: Record) -> None:
        # Every version this node sees moves its HLC forward, so its next write orders
        # after every write it has observed (causality for read-then-write).
        self._hlc.update(record.version)

    def _h_set(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        engine = self._engine
        # ctx.partition is the one this node computed from the key (the core recomputes a
        # peer's), so no second hash here.
        if self._node.partition_ready(ctx.partition):
            # The common write, stored from the payload's bytes (no Record); a peer's
            # version moves this node's HLC (_observe), this node's own cannot.
            stored = engine.put_wire(key, payload, None if ctx.local else self._hlc_observe)
            if stored:
                return b""
            if stored is not None:
                # Not stored: a refusal if this replica holds a higher version (_ordered).
                return refusal(engine.get_record(key), decode_record(payload))
        # Anything else as the general path: decode_record raises the precise error of a
        # malformed payload; put() learns a writer id not seen before.
        record = decode_record(payload)
        if not ctx.local:
            self._hlc.update(record.version)
        if not self._node.partition_ready(ctx.partition):
            # Still pulling the partition (joined, or restarted with empty memory): this
            # replica cannot know the version it should refuse, so it must not count.
            raise PartitionNotReadyError(self._node.address, ctx.partition)
        if engine.put(key, record):
            return b""
        return refusal(engine.get_record(key), record)

    def _h_get(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        # The answer's bytes straight from the stored record (no Record, no re-encoding);
        # ctx.partition is the one this node computed from the key.
        return self._engine.get_wire(key, ctx.partition)

    def _h_mset(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        for k, record in decode_entries(payload):
            self._hlc.update(record.version)
            self._engine.put(k, record)
        return b""

    def _h_mget(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        keys = decode_keys(payload)
        # A batch has no single partition for the core to check: refuse the whole batch
        # if any key's partition is still being pulled here (an empty answer would count
        # as "not found" in the read quorum).
        node = self._node
        partition_of = self._engine.partition_of
        for k in keys:
            partition = partition_of(k)
            if not node.partition_ready(partition):
                raise PartitionNotReadyError(node.address, partition)
        get = self._engine.get_record
        return encode_optional_records([get(k) for k in keys])
