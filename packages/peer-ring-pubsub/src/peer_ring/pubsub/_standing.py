"""Standing claims: a group fetch that hands messages out re-arms itself on the sequencer.

Between a group long-poll's answer and the consumer's next fetch (the answer's trip back,
the consumer's turn, the request's trip here) nothing is parked on the partition, so an
APPEND leaving then cannot carry delivery records for that consumer: its messages were
claimed after they committed, and their records replicated in a round trip of their own.
So when a fetch's answer is decided (a claim with messages; in a ``fetch_many`` every
section answered, empty ones too, since the consumer asks for all of them again), the
sequencer parks a *standing* claim for the same consumer with the room the consumer still
had (its ``limit`` less what it got), before the answer waits for its commit: each
APPEND leaving until the consumer's next fetch claims for it as for a parked long-poll
(records on the APPEND), up to that room, and the consumer's next fetch of that partition
collects the claim first (awaiting the last of those APPENDs' commit: one APPEND is in
flight per partition, so the earlier ones committed before it left).

Guarantees do not change: the records ride on the APPEND exactly as a parked long-poll's
do, the consumer holds at most what it asked for (the standing claim's limit is the
room left of its last request), a RELEASE (closing consumer) stops new standing claims and
releases what they hold, and a claim nobody collects (the consumer died, or the leader
stepped down) is a pending record like any other: redelivered after its ``ack_wait``.
A claim's ``ack_wait`` runs from the claim, so one collected later than a quarter of it
is not handed out (the consumer would count on more of the window than the sequencer
gives); it is redelivered when it expires. Collected within a few milliseconds normally.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from peer_ring.pubsub._leader_state import Leader, Parked
from peer_ring.pubsub._wire import FetchReply, FetchRequest

#: A collected claim older than this share of its ``ack_wait`` is not handed out: its
#: records may expire before the consumer sees it (they are redelivered at expiry).
_FRESH_SHARE = 0.25


def arm(leader: Leader, req: FetchRequest, delivered: int) -> None:
    """After a fetch of ``req`` handed out ``delivered`` messages: park a standing claim
    for the rest of its room (nothing when it is full or one is already claimed)."""
    room = req.limit - delivered
    key = (req.group, req.consumer)
    old = leader.standing.get(key)
    if old is not None:
        if old.reply is not None:
            return  # claimed already: kept for the consumer's next fetch
        leader.parked.remove(old)
        del leader.standing[key]
    if room < 1 or not leader.active:
        return
    park = Parked(replace(req, limit=room), asyncio.get_running_loop().create_future())
    park.standing = True
    leader.standing[key] = park
    leader.parked.append(park)


def collect(leader: Leader, req: FetchRequest, now: float) -> Parked | None:
    """Take the standing claim of ``req``'s consumer: returned when it claimed messages
    recently enough to hand out (await ``committed`` first), else dropped."""
    park = leader.standing.pop((req.group, req.consumer), None)
    if park is None:
        return None
    leader.parked.remove(park)
    if park.reply is None or park.committed is None or not park.reply.entries:
        return None
    if now - park.claimed_at > park.req.ack_wait * _FRESH_SHARE:
        return None
    return park


def drop(leader: Leader, group: str, consumer: str) -> None:
    """Forget ``consumer``'s standing claim (it closed: RELEASE frees what it holds)."""
    park = leader.standing.pop((group, consumer), None)
    if park is not None:
        leader.parked.remove(park)


def merge(first: FetchReply, second: FetchReply) -> FetchReply:
    """One reply of a collected claim (``first``) and a claim made after it."""
    return FetchReply(
        first.entries + second.entries,
        first.deliveries + second.deliveries,
        max(first.next, second.next),
        first.expired + second.expired,
    )
