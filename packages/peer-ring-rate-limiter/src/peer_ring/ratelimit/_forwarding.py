"""The forwarding node's batches of hits for one owner, and the owner's replication
messages to one replica node: what travels between nodes in owner mode.

Both speak the relay protocol (:mod:`~peer_ring.ratelimit._relay`) when the limiter's
``relay`` is on and the peer has not answered ``UnknownCommandError`` to it (a node of the
old protocol), and the old ``hits`` / ``states`` messages otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

from peer_ring.core import (
    Command,
    PeerRingError,
    PeerUnavailableError,
    RequestTimeoutError,
    UnknownCommandError,
)
from peer_ring.ratelimit._batcher import Batcher, Later
from peer_ring.ratelimit._decision import Decision
from peer_ring.ratelimit._errors import CorruptStateError
from peer_ring.ratelimit._hits import read_answers
from peer_ring.ratelimit._records import decode_packed, encode_packed
from peer_ring.ratelimit._relay import (
    decode_deliveries,
    decode_states_relay,
    encode_relay_hits,
    encode_states_relay,
)
from peer_ring.ratelimit._wire import (
    decode_decision,
    encode_hits,
    pack_records,
    unpack_records,
)

if TYPE_CHECKING:
    from peer_ring.ratelimit._limiter import RateLimiter

logger = logging.getLogger(__name__)

#: Decide a batch of hits on their keys' owner (one message per batch; see ``_hits``). The
#: key of the message is empty: the owner checks each hit's key itself, as for ``HIT``.
HITS = Command("hits", mutates=True, hinted=False)
#: ``HITS`` with a batch id first: the owner may relay decisions (relay protocol 1).
HITS_RELAY = Command("hits_relay", mutates=True, hinted=False)
#: Store a newer entry (owner to replicas). Idempotent (higher seq wins), hence hinted.
STATE = Command("state", mutates=True)
#: Many entries for one replica node in one message (the fast path of replication).
STATES = Command("states", mutates=True, hinted=False)
#: ``STATES`` plus relayed decisions the replica sends on to their forwarders.
STATES_RELAY = Command("states_relay", mutates=True, hinted=False)
#: Relayed decisions, replica to forwarder (``node.send``; the answer is not awaited).
RELAYED = Command("relayed", mutates=True, hinted=False)

Hit = tuple[bytes, bytes, int]


def forward_batcher(rl: RateLimiter, owner: str) -> Batcher[Hit, Decision]:
    """The batcher of hits forwarded to ``owner`` (one ``call`` per batch)."""
    batcher: Batcher[Hit, Decision]
    node, ns, timeout = rl.node, rl._ns, rl._timeout

    async def flush(items: Sequence[Hit]) -> Sequence[Decision | BaseException | Later]:
        hits = encode_hits([(kb, hit) for kb, hit, _ in items])
        try:
            if rl._relays_to(owner):
                try:
                    return await _flush_relay(rl, owner, items, hits)
                except UnknownCommandError:
                    logger.info("%s speaks the old protocol: no relayed decisions", owner)
                    rl._old_protocol.add(owner)
            raw = await node.call(owner, ns, HITS, b"", hits, timeout=timeout)
        except (RequestTimeoutError, PeerUnavailableError) as exc:
            # The owner did not answer this batch: the hits queued behind it would only
            # wait one more timeout each before getting the fail policy.
            failed = batcher.fail_pending(exc)
            if failed:
                logger.debug("owner %s unreachable: %d queued hits failed", owner, failed)
            raise
        return read_answers(rl, owner, items, raw)

    batcher = Batcher(
        flush,
        window=rl._batch_window,
        max_in_flight=rl._max_batches,
        max_items=rl._max_batch_size,
        light_in_flight=rl._light,
        on_batch=rl.metrics.observe_batch,
    )
    return batcher


async def _flush_relay(
    rl: RateLimiter, owner: str, items: Sequence[Hit], hits: bytes
) -> list[Decision | BaseException | Later]:
    waits = rl._relay_waits
    batch_id = waits.open()  # before sending: the replica's relay may beat the answer
    try:
        raw = await rl.node.call(
            owner,
            rl._ns,
            HITS_RELAY,
            b"",
            encode_relay_hits(batch_id, hits),
            timeout=rl._timeout,
        )
        relayed: list[int] = []
        out: list[Decision | BaseException | Later] = []
        out.extend(read_answers(rl, owner, items, raw, relayed))
    except (RequestTimeoutError, PeerUnavailableError) as exc:
        # The owner's answer is lost (it died after deciding, or the link broke), but
        # decisions the replica relayed meanwhile stand: their states are on both.
        arrived = waits.arrived(batch_id)
        waits.close(batch_id)
        if not arrived:
            raise
        return [_decision_or(arrived.get(i), exc) for i in range(len(items))]
    except BaseException:
        waits.close(batch_id)
        raise
    if not relayed:
        waits.close(batch_id)
        return out
    # Each relayed hit's future goes to the batch's waits (Later): the relayed decision
    # resolves it when it arrives, without waking this flush, which ends here.
    waits.expect(batch_id, len(relayed), rl.node.clock, rl._timeout)
    for i in relayed:
        out[i] = Later(partial(waits.bind, batch_id, i))
    return out


def _decision_or(raw: bytes | None, exc: BaseException) -> Decision | BaseException:
    if raw is None:
        return exc
    try:
        return decode_decision(raw)
    except CorruptStateError as bad:
        return bad


async def send_states(
    rl: RateLimiter, replica: str, keys: Mapping[bytes, int], relays: list[bytes]
) -> None:
    """Replicate the newest entries of ``keys`` to ``replica``: one ``STATES`` call (all
    its keys in one message; ``STATES_RELAY`` with the relayed decisions when there are
    some); if that node fails, the keys go through ``execute_many(STATE)`` instead, with the
    core's sloppy quorum and hinted handoff, and this node sends the relayed decisions to
    their forwarders itself."""
    node, ns, store, metrics = rl.node, rl._ns, rl.store, rl.metrics
    now = node.clock.monotonic()
    records: dict[bytes, bytes] = {}
    part = node.partition_for_key
    # Each key once (a key decided twice meanwhile: its newest entry), encoded from the
    # store's tuple (see ``_records``).
    for kb, p in keys.items():
        packed = store.get_packed(kb, p if p >= 0 else part(kb))
        if packed is not None:
            records[kb] = encode_packed(kb, packed, now)
    if not records and not relays:
        return
    metrics.state_batches += 1
    metrics.states_sent += len(records)
    try:
        if relays and replica not in rl._old_protocol:
            try:
                payload = encode_states_relay(list(records.values()), relays)
                await node.call(replica, ns, STATES_RELAY, b"", payload, timeout=rl._timeout)
                return
            except UnknownCommandError:
                logger.info("%s speaks the old protocol: no relayed decisions", replica)
                rl._old_protocol.add(replica)
                raise
        await node.call(
            replica, ns, STATES, b"", pack_records(list(records.values())), timeout=rl._timeout
        )
    except PeerRingError as exc:
        logger.debug("states to %s failed (%s): falling back per key", replica, exc)
        results = await node.execute_many(
            ns,
            STATE,
            list(records.items()),
            replication=rl.replication,
            quorum=rl._state_quorum,
            timeout=rl._timeout,
        )
        for res in results:
            if not res.ok:
                metrics.replication_failures += 1
                logger.debug("state of %r not replicated: %s", res.key, res.error)
        # A decision stands once taken; a replication failure is counted, not raised.
    if relays:
        # The replica did not take them (it failed, or speaks the old protocol): the
        # states went through the fallback above, the decisions go from here.
        _, per_forwarder = decode_states_relay(encode_states_relay([], relays))
        _deliver(rl, per_forwarder)


def _deliver(rl: RateLimiter, per_forwarder: dict[str, list[bytes]]) -> None:
    for forwarder, deliveries in per_forwarder.items():
        rl.metrics.relays_sent += len(deliveries)
        rl.metrics.relay_messages += 1
        rl.node.send(rl._ns, RELAYED, b"", pack_records(deliveries), nodes=(forwarder,))


def on_states(rl: RateLimiter, payload: bytes) -> None:
    """Merge the entries of a ``states`` payload (this node is a replica of their keys)."""
    store, part = rl.store, rl.node.partition_for_key
    now = rl.node.clock.monotonic()
    for rec in unpack_records(payload):
        rkey, packed = decode_packed(rec, now)
        store.merge_packed(rkey, packed, part(rkey))


def on_states_relay(rl: RateLimiter, payload: bytes) -> None:
    """Merge the entries of a ``states_relay`` payload, *then* send its relayed decisions
    on to their forwarders (each decision leaves once its state is stored here)."""
    states, per_forwarder = decode_states_relay(payload)
    store, part = rl.store, rl.node.partition_for_key
    now = rl.node.clock.monotonic()
    for rec in states:
        rkey, packed = decode_packed(rec, now)
        store.merge_packed(rkey, packed, part(rkey))
    _deliver(rl, per_forwarder)


def on_relayed(rl: RateLimiter, payload: bytes) -> None:
    """Relayed decisions arriving at the forwarder (``relayed``)."""
    rl._relay_waits.deliver(decode_deliveries(payload))
