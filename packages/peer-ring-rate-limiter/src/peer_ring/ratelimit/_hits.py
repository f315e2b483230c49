"""Forwarded hits, one message per batch: the owner's side and the reading of its answers.

A node sends the hits it gathered for one owner in one ``call`` (command ``hits``), not
through ``execute_many``: the owner then decides the whole batch in one handler call, and
the hits whose state must reach another replica wait on one future per replica node (the
:class:`~peer_ring.ratelimit._replicator.Replicator`'s message), not one per hit; the core's
per-key routing, per-key results and per-hit callbacks are not needed for a message whose
every key has the same destination. Each hit gets its own answer (a decision, or why the
owner refused it), so one bad or refused hit fails only itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from peer_ring.core import PartitionNotReadyError
from peer_ring.ratelimit._decision import Decision
from peer_ring.ratelimit._errors import (
    CorruptStateError,
    InvalidCostError,
    NotOwnerError,
    RateLimitError,
)
from peer_ring.ratelimit._limit import MAX_LIMIT
from peer_ring.ratelimit._records import decode_packed, encode_packed
from peer_ring.ratelimit._relay import ANSWER_RELAYED, RELAYED_ANSWER, encode_relay
from peer_ring.ratelimit._wire import (
    ANSWER_BAD,
    ANSWER_NOT_OWNER,
    ANSWER_NOT_READY,
    ANSWER_OK,
    answer_error,
    answer_ok,
    decode_decision,
    decode_hit,
    decode_hits,
    encode_decision,
    pack_records,
    split_answer,
    split_status,
    unpack_records,
)

if TYPE_CHECKING:
    from peer_ring.ratelimit._limiter import RateLimiter

_NOT_OWNER = answer_error(ANSWER_NOT_OWNER)
_NOT_READY = answer_error(ANSWER_NOT_READY)


def answer_hits(
    rl: RateLimiter, source: str, payload: bytes, batch_id: int | None = None
) -> bytes | Awaitable[bytes]:
    """Decide a batch of hits from ``source`` on this node (the owner of their keys).

    ``batch_id``: the batch came with ``hits_relay`` (see :mod:`~peer_ring.ratelimit._relay`):
    at replication 2 a changed hit whose other replica is not ``source`` is relayed, its
    decision sent to that replica with the state, and answered ``ANSWER_RELAYED`` here.

    Each hit is decided only if this node heads its key's preference list in its own ring
    and holds the key's partition in full (as for a single hit); otherwise its answer says
    why, and the sender applies its fail policy to that hit. The answer leaves once every
    new state is on the key's other replicas: with the answer itself when ``source`` is one
    of them, in a replication message otherwise.
    """
    node = rl.node
    ring = node.ring
    me = node.address
    n = rl.replication
    metrics = rl.metrics
    answers: list[bytes] = []
    waits: dict[int, asyncio.Future[None]] = {}
    now = -1.0
    hits = decode_hits(payload)
    if batch_id is not None and rl._relay_max is not None and len(hits) > rl._relay_max:
        batch_id = None  # a heavy load: the owner answers (see relay_max_batch)
    for kb, hit in hits:
        try:
            limit, cost = decode_hit(hit)
            if not -MAX_LIMIT <= cost <= MAX_LIMIT:
                raise InvalidCostError(f"cost {cost} outside [-{MAX_LIMIT}, {MAX_LIMIT}]")
        except RateLimitError as exc:
            answers.append(answer_error(ANSWER_BAD, str(exc)))
            continue
        p = ring.partition_for_key(kb)
        replicas = ring.preference_list(p, n)
        if replicas[0] != me:
            answers.append(_NOT_OWNER)
            continue
        if not node.partition_ready(p):
            answers.append(_NOT_READY)
            continue
        d, changed = rl._decide(kb, p, limit, cost, False)
        answer = answer_ok(encode_decision(d))
        if changed:
            if batch_id is not None and n == 2 and replicas[1] != source:
                r = replicas[1]
                if rl._relays_to(r):
                    record = encode_relay(source, batch_id, len(answers), encode_decision(d))
                    rl.replicator(r).relay(kb, record, p)
                    metrics.relayed += 1
                    answers.append(RELAYED_ANSWER)
                    continue
            for r in replicas[1:]:
                if r == source:
                    # The sender is another replica: the entry travels with the answer and
                    # the sender stores it before it releases the decision.
                    if now < 0:
                        now = rl.node.clock.monotonic()
                    packed = rl.store.get_packed(kb, p)
                    assert packed is not None  # just stored
                    answer += encode_packed(kb, packed, now)
                    metrics.states_with_answer += 1
                else:
                    fut = rl.replicator(r).submit(kb, p)
                    waits[id(fut)] = fut
        answers.append(answer)
    out = pack_records(answers)
    if not waits:
        return out
    return _when_replicated(list(waits.values()), out)


async def _when_replicated(waits: list[asyncio.Future[None]], out: bytes) -> bytes:
    for fut in waits:
        await fut
    return out


def read_answers(
    rl: RateLimiter,
    owner: str,
    items: Sequence[tuple[bytes, bytes, int]],
    raw: bytes,
    relayed: list[int] | None = None,
) -> list[Decision | BaseException]:
    """The decisions (or errors) of a batch ``items`` (``(key, hit, partition)``) that
    ``owner`` answered with ``raw``; entries sent with the answers are stored first.

    ``relayed``: the batch was sent with ``hits_relay``; the indices of the hits answered
    ``ANSWER_RELAYED`` are appended to it (their places in the result hold an error until
    the caller puts the relayed decision there)."""
    answers = unpack_records(raw)
    if len(answers) != len(items):
        raise CorruptStateError(f"{len(answers)} answers to {len(items)} hits")
    store = rl.store
    now = rl.node.clock.monotonic()
    out: list[Decision | BaseException] = []
    for (kb, _, p), answer in zip(items, answers, strict=True):
        try:
            status, rest = split_status(answer)
            if status == ANSWER_OK:
                decision, record = split_answer(rest)
                d = decode_decision(decision)
                if record:
                    # This node is the key's other replica: the owner relies on the entry
                    # being stored here before the decision is released.
                    rkey, packed = decode_packed(record, now)
                    if rkey != kb:
                        raise CorruptStateError("answer carries another key's state")
                    store.merge_packed(rkey, packed, p)
                out.append(d)
            elif status == ANSWER_NOT_OWNER:
                out.append(NotOwnerError(f"{owner} does not own {kb!r} in its ring"))
            elif status == ANSWER_NOT_READY:
                out.append(PartitionNotReadyError(owner, p))
            elif status == ANSWER_RELAYED and relayed is not None:
                relayed.append(len(out))
                out.append(CorruptStateError("relayed decision not received"))
            elif status == ANSWER_BAD:
                why = rest.decode(errors="replace")
                out.append(CorruptStateError(f"{owner} refused the hit: {why}"))
            else:
                raise CorruptStateError(f"unknown answer status {status}")
        except RateLimitError as exc:
            out.append(exc)
    return out
