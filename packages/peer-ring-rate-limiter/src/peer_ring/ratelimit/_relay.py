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
from functools import partial

from peer_ring.core import Clock, TimerHandle
from peer_ring.ratelimit._decision import Decision
from peer_ring.ratelimit._errors import CorruptStateError, OwnerUnavailableError
from peer_ring.ratelimit._wire import decode_decision, pack_records, unpack_records

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


class _Batch:
    """One open batch: relayed decisions that came before their hit was handed over
    (``early``), the hits' futures waiting for theirs (``waiting``)."""

    __slots__ = ("early", "expected", "timer", "waiting")

    def __init__(self) -> None:
        self.early: dict[int, bytes] = {}
        self.waiting: dict[int, asyncio.Future[Decision]] = {}
        self.expected = 0  # relayed hits handed over and not yet resolved
        self.timer: TimerHandle | None = None


class RelayWaits:
    """F's side: the relayed decisions each open batch waits for.

    A batch is opened before it is sent, because R's ``relayed`` message may arrive before
    O's answer (they travel different paths): a decision for an open batch is kept until the
    answer names it; one for a closed (answered or timed out) batch is dropped and counted
    in :attr:`late`. Batch ids start at a random value so that a restarted node with the
    same address does not take an old relay for one of its new batches.

    Once O's answer is read, the hits it answered "relayed" are handed over
    (:meth:`expect`, then :meth:`bind` with each hit's own future): the relayed decision
    resolves that future directly when it arrives, so the hit's caller wakes in the loop
    turn after the relay is read (the batch's flush no longer waits for it, and its slot
    to the owner is free at the owner's answer). One timer per batch ends the wait after
    ``timeout``: the hits still waiting get :class:`OwnerUnavailableError`.
    """

    def __init__(self) -> None:
        self._open: dict[int, _Batch] = {}
        self._next = random.getrandbits(63)
        self._idle: asyncio.Future[None] | None = None
        #: Relayed decisions that arrived after their batch was closed.
        self.late = 0
        #: Relayed decisions received for open batches.
        self.received = 0

    def __len__(self) -> int:
        return len(self._open)

    def open(self) -> int:
        """A new batch id, open for relayed decisions until it is closed."""
        batch_id = self._next
        self._next = (batch_id + 1) & 0xFFFF_FFFF_FFFF_FFFF
        self._open[batch_id] = _Batch()
        return batch_id

    def close(self, batch_id: int) -> None:
        """Stop waiting for ``batch_id``'s relayed decisions (late ones are dropped)."""
        batch = self._open.pop(batch_id, None)
        if batch is not None and batch.timer is not None:
            batch.timer.cancel()
        if not self._open and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def arrived(self, batch_id: int) -> dict[int, bytes]:
        """The decisions already relayed for open batch ``batch_id`` and not handed over,
        by index."""
        batch = self._open.get(batch_id)
        return {} if batch is None else dict(batch.early)

    def expect(self, batch_id: int, count: int, clock: Clock, timeout: float) -> None:
        """O answered: ``count`` hits of the batch are relayed and will be handed over with
        :meth:`bind`; after ``timeout`` on ``clock`` those still waiting fail."""
        batch = self._open[batch_id]
        batch.expected += count
        batch.timer = clock.call_later(timeout, partial(self._expire, batch_id))

    def bind(self, batch_id: int, index: int, fut: asyncio.Future[Decision]) -> None:
        """Resolve ``fut`` with the decision relayed for hit ``index`` (now if it came)."""
        batch = self._open.get(batch_id)
        if batch is None:  # expired already (not on one loop turn: defensive)
            if not fut.done():
                fut.set_exception(OwnerUnavailableError("relayed decision not received"))
            return
        raw = batch.early.pop(index, None)
        if raw is None and not fut.done():
            batch.waiting[index] = fut
            return
        if raw is not None:
            _resolve(fut, raw)
        self._resolved(batch_id, batch)

    def deliver(self, deliveries: Iterable[tuple[int, int, bytes]]) -> None:
        """Decisions from R (``relayed``): each resolves its open batch's hit."""
        for batch_id, index, decision in deliveries:
            batch = self._open.get(batch_id)
            if batch is None:
                self.late += 1
                continue
            fut = batch.waiting.pop(index, None)
            if fut is not None:
                self.received += 1
                _resolve(fut, decision)
                self._resolved(batch_id, batch)
            elif index not in batch.early:  # a duplicate changes nothing
                self.received += 1
                batch.early[index] = decision

    def _resolved(self, batch_id: int, batch: _Batch) -> None:
        batch.expected -= 1
        if batch.expected <= 0:
            self.close(batch_id)

    def _expire(self, batch_id: int) -> None:
        batch = self._open.get(batch_id)
        if batch is None:
            return
        batch.timer = None
        self.close(batch_id)
        for index, fut in batch.waiting.items():
            if not fut.done():
                fut.set_exception(
                    OwnerUnavailableError(f"decision of hit {index} relayed, not received")
                )

    async def wait_idle(self) -> None:
        """Return once no batch is open (each ends by its relays or its timer)."""
        if not self._open:
            return
        if self._idle is None or self._idle.done():
            self._idle = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._idle)


def _resolve(fut: asyncio.Future[Decision], raw: bytes) -> None:
    if fut.done():
        return  # its caller went away
    try:
        fut.set_result(decode_decision(raw))
    except CorruptStateError as exc:
        fut.set_exception(exc)
