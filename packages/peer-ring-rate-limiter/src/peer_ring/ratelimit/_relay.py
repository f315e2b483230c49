"""The replica answers the forwarder: forwarded hits in 1.5 round trips instead of 2.

At replication 2, a hit forwarded by a node F that is not the key's other replica R used to
take two round trips: F -> owner O, O -> R (the new state), R -> O, O -> F. With this
protocol (relay protocol 1, its own commands):

1. F sends its batch with ``hits_relay`` (a batch id first, then the hits as ``hits``).
2. O decides each hit. A hit whose state changed and whose other replica is R (not F) is
   *relayed*: O puts the decision beside the key's new state in its next replication
   message to R (``states_relay``), naming F, the batch id and the hit's index, and answers
   F at once with ``ANSWER_RELAYED`` for that hit (O does not wait for R).
3. R stores the states first, then sends the relayed decisions, grouped per forwarder, to
   each F in one ``relayed`` message (``node.send``).
4. F releases a relayed decision only when it arrives from R: by then both replicas hold
   the state, as with the old path (an admitted hit survives a kill -9 of O).

The decision leaves F after F -> O, O -> R, R -> F: 1.5 round trips. The core has no
one-way message (``send`` is a request whose answer is not awaited), so this is one
*request* more per replication message carrying relays, not one message fewer.

When R fails the replication message, O falls back as before (the core's sloppy quorum for
the states) and then sends the relayed decisions to F itself. When R or O is slow, F waits
``timeout`` for a relayed decision after O's answer and then applies its fail policy to
that hit (the same ambiguity as a timed-out forwarded hit). A node of the old protocol does
not know these commands and answers ``UnknownCommandError``: F then sends that owner the
old ``hits``, and O sends that replica the old ``states`` (each remembered per address).
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Iterable

from peer_ring.ratelimit._errors import CorruptStateError
from peer_ring.ratelimit._wire import pack_records, unpack_records

#: Status of a hit in O's answer: its decision comes from the key's other replica.
ANSWER_RELAYED = 4
RELAYED_ANSWER = bytes((ANSWER_RELAYED,))

# batch id, index of the hit in the batch, length of the forwarder's address
_RELAY = struct.Struct(">QIH")
# batch id, index
_DELIVERY = struct.Struct(">QI")
_BATCH_ID = struct.Struct(">Q")


def encode_relay_hits(batch_id: int, hits: bytes) -> bytes:
    """F's ``hits_relay`` payload: the batch id, then ``encode_hits``'s bytes."""
    return _BATCH_ID.pack(batch_id) + hits


def decode_relay_hits(payload: bytes) -> tuple[int, bytes]:
    """Inverse of :func:`encode_relay_hits`."""
    if len(payload) < _BATCH_ID.size:
        raise CorruptStateError(f"relay hits of {len(payload)} bytes")
    return _BATCH_ID.unpack_from(payload)[0], payload[_BATCH_ID.size :]


def encode_relay(forwarder: str, batch_id: int, index: int, decision: bytes) -> bytes:
    """One relayed decision in O's replication message to R."""
    fwd = forwarder.encode()
    return _RELAY.pack(batch_id, index, len(fwd)) + fwd + decision


def encode_states_relay(states: list[bytes], relays: list[bytes]) -> bytes:
    """O's ``states_relay`` payload: the entries (as ``states``), then the relayed decisions."""
    return pack_records([pack_records(states), pack_records(relays)])


def decode_states_relay(payload: bytes) -> tuple[list[bytes], dict[str, list[bytes]]]:
    """``(entry records, {forwarder: delivery records})`` of a ``states_relay`` payload."""
    parts = unpack_records(payload)
    if len(parts) != 2:
        raise CorruptStateError(f"states_relay with {len(parts)} parts")
    per_forwarder: dict[str, list[bytes]] = {}
    head = _RELAY.size
    for rec in unpack_records(parts[1]):
        if len(rec) < head:
            raise CorruptStateError(f"relay record of {len(rec)} bytes")
        batch_id, index, n = _RELAY.unpack_from(rec)
        if len(rec) < head + n:
            raise CorruptStateError("truncated relay record")
        try:
            fwd = rec[head : head + n].decode()
        except UnicodeDecodeError as exc:
            raise CorruptStateError("relay record with a bad address") from exc
        delivery = _DELIVERY.pack(batch_id, index) + rec[head + n :]
        per_forwarder.setdefault(fwd, []).append(delivery)
    return unpack_records(parts[0]), per_forwarder


def decode_deliveries(payload: bytes) -> list[tuple[int, int, bytes]]:
    """``(batch id, index, decision)`` of R's ``relayed`` message to F."""
    out: list[tuple[int, int, bytes]] = []
    n = _DELIVERY.size
    for rec in unpack_records(payload):
        if len(rec) < n:
            raise CorruptStateError(f"relayed decision of {len(rec)} bytes")
        batch_id, index = _DELIVERY.unpack_from(rec)
        out.append((batch_id, index, rec[n:]))
    return out


class RelayWaits:
    """F's side: the relayed decisions each open batch waits for.

    A batch is opened before it is sent, because R's ``relayed`` message may arrive before
    O's answer (they travel different paths): a decision for an open batch is kept until the
    answer names it; one for a closed (answered or timed out) batch is dropped and counted
    in :attr:`late`. Batch ids start at a random value so that a restarted node with the
    same address does not take an old relay for one of its new batches.
    """

    def __init__(self) -> None:
        self._open: dict[int, dict[int, asyncio.Future[bytes]]] = {}
        self._next = random.getrandbits(63)
        #: Relayed decisions that arrived after their batch was closed.
        self.late = 0
        #: Relayed decisions received for open batches.
        self.received = 0

    def __len__(self) -> int:
        return len(self._open)

    def open(self) -> int:
        """A new batch id, open for relayed decisions until :meth:`close`."""
        batch_id = self._next
        self._next = (batch_id + 1) & 0xFFFF_FFFF_FFFF_FFFF
        self._open[batch_id] = {}
        return batch_id

    def close(self, batch_id: int) -> None:
        """Stop waiting for ``batch_id``'s relayed decisions (late ones are dropped)."""
        waits = self._open.pop(batch_id, None)
        for fut in (waits or {}).values():
            if not fut.done():
                fut.cancel()

    def future(self, batch_id: int, index: int) -> asyncio.Future[bytes]:
        """The decision relayed for hit ``index`` of open batch ``batch_id``."""
        waits = self._open[batch_id]
        fut = waits.get(index)
        if fut is None:
            fut = waits[index] = asyncio.get_running_loop().create_future()
        return fut

    def arrived(self, batch_id: int) -> dict[int, bytes]:
        """The decisions already relayed for open batch ``batch_id``, by index."""
        waits = self._open.get(batch_id, {})
        return {i: fut.result() for i, fut in waits.items() if fut.done() and not fut.cancelled()}

    def deliver(self, deliveries: Iterable[tuple[int, int, bytes]]) -> None:
        """Decisions from R (``relayed``): each resolves its open batch's hit."""
        loop: asyncio.AbstractEventLoop | None = None
        for batch_id, index, decision in deliveries:
            waits = self._open.get(batch_id)
            if waits is None:
                self.late += 1
                continue
            fut = waits.get(index)
            if fut is None:
                loop = loop or asyncio.get_running_loop()
                fut = waits[index] = loop.create_future()
            if not fut.done():
                self.received += 1
                fut.set_result(decision)
