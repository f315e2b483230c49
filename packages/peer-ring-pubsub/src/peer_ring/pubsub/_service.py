"""Sequencer-side handlers: publish, fetch (long-poll) and settle (ack / nak / ...).

Each handler runs on the head of the partition's preference list; every error a client
should see is returned in the reply with its code (:func:`._wire.error_reply`), so the
node keeps serving and the caller raises the same typed error.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from peer_ring.core import CommandContext, PeerRingError
from peer_ring.pubsub._codec import CodecError
from peer_ring.pubsub._errors import (
    InvalidOptionError,
    OffsetOutOfRangeError,
    PartitionUnavailableError,
    PubSubError,
)
from peer_ring.pubsub._group import GroupState
from peer_ring.pubsub._leader import MAX_ACK_HOLD, Leaders
from peer_ring.pubsub._leader_state import Leader, Parked, Slot
from peer_ring.pubsub._log import MESSAGE, Entry, PartitionLog
from peer_ring.pubsub._tasks import spawn
from peer_ring.pubsub._waits import both, wait_any, wait_event
from peer_ring.pubsub._wire import (
    ACK,
    NAK,
    PROGRESS,
    RELEASE,
    TERM,
    FetchReply,
    FetchRequest,
    SettleRequest,
    decode_fetch_sections,
    decode_publish,
    decode_publish_sections,
    decode_settle_sections,
    encode_publish_many_reply,
    encode_publish_results,
    error_reply,
    ok_reply,
    split_key,
)

logger = logging.getLogger(__name__)

#: A pending record's deadline (``map`` over it: no generator per record on every wait).
_DEADLINE = operator.attrgetter("deadline")

#: Seconds a closed consumer is remembered (longer than any long-poll).
_RELEASED_MEMORY = 120.0

#: ``dead_letter(topic, partition_key, group, entry)`` publishes to the dead-letter topic.
DeadLetter = Callable[[str, bytes, str, Entry], Awaitable[None]]


def typed_error(exc: BaseException) -> PubSubError | None:
    """The typed error a caller sees for ``exc`` raised while serving a request (None:
    not expected, let it propagate).

    Pub-sub errors keep their type; a malformed request is an ``InvalidOptionError``; a
    failure of a replica or peer under the sequencer is retryable
    (``PartitionUnavailableError``).
    """
    if isinstance(exc, PubSubError):
        return exc
    if isinstance(exc, CodecError | ValueError):
        return InvalidOptionError(f"malformed request: {exc}")
    if isinstance(exc, PeerRingError):
        return PartitionUnavailableError(f"{type(exc).__name__}: {exc}")
    return None


T = TypeVar("T")


def _sections_reply(outcomes: Sequence[T | BaseException], encode: Callable[[T], bytes]) -> bytes:
    """One reply for a request of several sections, each succeeding or failing on its own:
    a failure the caller should see becomes that section's error reply; any other is
    raised (the whole request fails, as for a single section)."""
    parts = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            mapped = typed_error(outcome)
            if mapped is None:
                raise outcome
            parts.append(error_reply(mapped))
        else:
            parts.append(encode(outcome))
    return ok_reply(encode_publish_many_reply(parts))


def _publish_section(results: list[tuple[Entry, bool]]) -> bytes:
    return ok_reply(encode_publish_results(results))


def _ok_section(_: object) -> bytes:
    return ok_reply()


def _source(ctx: CommandContext | None) -> str:
    """The requesting node ("" when unknown, e.g. a handler called directly)."""
    return ctx.source if ctx is not None else ""


def _check_fetch(req: FetchRequest) -> None:
    if req.limit < 1 or req.wait < 0 or req.ack_wait <= 0 or req.max_deliver < 1:
        raise InvalidOptionError("fetch: limit, ack_wait, max_deliver must be positive")


async def _raise(exc: BaseException) -> list[tuple[Entry, bool]]:
    """A section that failed before its first await, as one of the gathered outcomes."""
    raise exc


async def _settled(follow_up: Awaitable[None]) -> None:
    """Await a replication nobody waits for (its failure already made the sequencer step
    down; the records it carried are on W replicas anyway)."""
    try:
        await follow_up
    except PeerRingError as exc:
        logger.debug("pubsub: follow-up replication of delivery records failed: %s", exc)


class Service:
    """The PUBLISH / FETCH / SETTLE handlers of this node."""

    def __init__(self, leaders: Leaders, dead_letter: DeadLetter) -> None:
        self.leaders = leaders
        self.store = leaders.store
        self.clock = leaders.node.clock
        self._dead_letter = dead_letter
        self._dead_inflight: set[tuple[bytes, str, int]] = set()
        self.expired = 0
        self.dead_lettered = 0
        # Consumers that closed (RELEASE): a long-poll of theirs still waiting here must not
        # claim messages for them any more (nobody would receive the reply).
        self._released: dict[str, float] = {}
        leaders.piggyback = self._piggyback
        #: Claims whose delivery records rode on an APPEND (for tests and tuning).
        self.piggybacked = 0
        #: Claims whose delivery records travelled in the reply to a replica's consumer.
        self.records_in_reply = 0

    async def _guard(self, run: Callable[[], Awaitable[bytes]]) -> bytes:
        try:
            return await run()
        except Exception as exc:
            mapped = typed_error(exc)
            if mapped is None:
                raise
            return error_reply(mapped)

    # ---------------------------------------------------------------- publish
    async def handle_publish(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        async def run() -> bytes:
            config, messages = decode_publish(payload)
            results = await self.leaders.publish(key, config, messages)
            return ok_reply(encode_publish_results(results))

        return await self._guard(run)

    async def handle_publish_many(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        """PUBLISH for several partitions this node sequences (one section each); each
        section succeeds or fails on its own."""

        async def run() -> bytes:
            sections = decode_publish_sections(payload)
            outcomes: list[list[tuple[Entry, bool]] | BaseException]
            if len(sections) == 1:
                k, config, messages = sections[0]
                try:
                    outcomes = [await self.leaders.publish(k, config, messages)]
                except Exception as exc:
                    outcomes = [exc]
            else:
                # Every section takes its sequences now, in order, before the first await:
                # gathered coroutines would take them a loop turn later, after a request
                # that arrived later but was served at once (a single section), and a
                # publisher's two requests in flight would land out of order.
                pending: list[Awaitable[list[tuple[Entry, bool]]]] = []
                for k, config, messages in sections:
                    try:
                        begun = self.leaders.publish_begin(k, config, messages)
                    except Exception as exc:
                        pending.append(_raise(exc))
                        continue
                    if begun is None:  # the leader must be looked up first
                        begun = self.leaders.publish(k, config, messages)
                    pending.append(begun)
                outcomes = await asyncio.gather(*pending, return_exceptions=True)
            return _sections_reply(outcomes, _publish_section)

        return await self._guard(run)

    # ------------------------------------------------------------------ fetch
    async def handle_fetch(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        async def run() -> bytes:
            return (await self.fetch(key, FetchRequest.decode(payload), _source(ctx))).encode()

        return await self._guard(run)

    @staticmethod
    def fetch_by(key: bytes, req: FetchRequest, service: Service) -> Awaitable[FetchReply]:
        """``service.fetch(key, req)`` (arguments in the order ``functools.partial`` binds)."""
        return service.fetch(key, req)

    async def fetch(self, key: bytes, req: FetchRequest, source: str = "") -> FetchReply:
        """Run one FETCH (a group claim or a plain read), waiting up to ``req.wait``.

        Called by the FETCH handler (``source``: the requesting node), and directly (no
        encoding) by a consumer on the sequencer's own node; errors are raised as
        :func:`typed_error` maps them.
        """
        _check_fetch(req)
        leader = await self.leaders.get(key, req.config)
        deadline = self.clock.monotonic() + min(req.wait, 30.0)
        while True:
            if not leader.active:
                leader = await self.leaders.get(key, req.config)
            version = leader.version
            if req.group:
                reply = await self._claim(leader, req, source)
            else:
                reply = self._read(leader, req)
            now = self.clock.monotonic()
            if reply.entries or now >= deadline:
                return reply
            if leader.version != version:  # new messages while the claim was replicating
                continue
            wake = deadline
            if req.group:
                group = self.store.state(key, req.config).groups.get(req.group)
                if group is not None and group.pending:
                    wake = min(wake, min(map(_DEADLINE, group.pending.values())))
            if self.leaders.copies(leader.config)[0] == 1:
                # No round trip to save: the old wake-up (through the leader's event),
                # whose extra loop turns let a busy single-copy node batch more per claim.
                await wait_event(self.clock, leader.changed, max(0.0, wake - now))
                continue
            parked = await wait_any(
                self.clock, [leader], max(0.0, wake - now), [(leader, req)] if req.group else []
            )
            for park in parked:
                if park.reply is not None and park.committed is not None:
                    await park.committed  # fails retryably when the append failed
                    return park.reply

    async def handle_fetch_many(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        """FETCH for several partitions this node sequences, as one long-poll; each section
        succeeds or fails on its own."""

        async def run() -> bytes:
            outcomes = await self.fetch_many(decode_fetch_sections(payload), _source(ctx))
            return _sections_reply(outcomes, FetchReply.encode)

        return await self._guard(run)

    async def fetch_many(
        self, sections: list[tuple[bytes, FetchRequest]], source: str = ""
    ) -> list[FetchReply | BaseException]:
        """One long-poll over several partitions: returns as soon as one section has
        messages or failed (with whatever every section holds then), or at the longest
        ``wait`` of the sections with every section empty."""
        if not sections:
            return []
        wait = max(req.wait for _, req in sections)
        deadline = self.clock.monotonic() + min(wait, 30.0)
        instant = [(key, replace(req, wait=0.0)) for key, req in sections]
        while True:
            # Versions before the pass: a partition that commits while another section's
            # claim awaits its replication must not be slept on.
            before = [self._version(key) for key, _ in sections]
            outcomes = await self._fetch_pass(instant, source)
            now = self.clock.monotonic()
            if now >= deadline or any(isinstance(o, BaseException) or o.entries for o in outcomes):
                return outcomes
            leaders = [self.leaders.leaders.get(key) for key, _ in sections]
            if any(
                leader is None or (leader, leader.version) != seen
                for leader, seen in zip(leaders, before, strict=True)
            ):
                continue
            wake = deadline
            parks: list[tuple[Leader, FetchRequest]] = []
            parked_at: list[int] = []  # the section of each park
            for i, ((key, req), leader) in enumerate(zip(sections, leaders, strict=True)):
                if req.group and leader is not None:
                    parks.append((leader, req))
                    parked_at.append(i)
                    group = self.store.state(key, req.config).groups.get(req.group)
                    if group is not None and group.pending:
                        wake = min(wake, min(map(_DEADLINE, group.pending.values())))
            parked = await wait_any(
                self.clock, [leader for leader in leaders if leader], max(0.0, wake - now), parks
            )
            claimed = {
                i: park for i, park in zip(parked_at, parked, strict=True) if park.reply is not None
            }
            if claimed:
                return await self._parked_outcomes(instant, claimed, source)

    async def _fetch_pass(
        self, sections: list[tuple[bytes, FetchRequest]], source: str = ""
    ) -> list[FetchReply | BaseException]:
        """One non-waiting fetch of every section. A section whose leader and group exist
        (the common case) is claimed inline, its group delta queued, and the replications
        awaited together at the end; the others (a takeover, a new group, a seek) go
        through :meth:`fetch` as tasks."""
        outcomes: list[FetchReply | BaseException | None] = [None] * len(sections)
        slow: list[int] = []
        waits: list[tuple[int, Awaitable[None]]] = []
        for i, (key, req) in enumerate(sections):
            leader = self.leaders.cached(key, req.config)
            if (
                leader is None
                or req.start_time is not None
                or (req.group and req.group not in self.store.state(key, req.config).groups)
            ):
                slow.append(i)
                continue
            try:
                _check_fetch(req)
                if req.group:
                    reply, wait = self._claim_begin(leader, req, source)
                    if wait is not None:
                        waits.append((i, wait))
                else:
                    reply = self._read(leader, req)
                outcomes[i] = reply
            except Exception as exc:
                outcomes[i] = exc
        if slow:
            done = await asyncio.gather(
                *(self.fetch(*sections[i]) for i in slow), return_exceptions=True
            )
            for i, outcome in zip(slow, done, strict=True):
                outcomes[i] = outcome
        for i, wait in waits:  # already in flight together: awaiting in turn costs nothing
            try:
                await wait
            except Exception as exc:
                outcomes[i] = exc
        return [o if o is not None else InvalidOptionError("no outcome") for o in outcomes]

    def _version(self, key: bytes) -> tuple[Leader, int] | None:
        leader = self.leaders.leaders.get(key)
        return None if leader is None else (leader, leader.version)

    async def _parked_outcomes(
        self,
        instant: list[tuple[bytes, FetchRequest]],
        claimed: dict[int, Parked],  # section index -> its park, claimed for
        source: str = "",
    ) -> list[FetchReply | BaseException]:
        """The answer of a long-poll woken with claims made for some sections by an APPEND:
        those sections' replies once their appends committed, the others' of one pass."""
        rest = [i for i in range(len(instant)) if i not in claimed]
        outcomes: list[FetchReply | BaseException | None] = [None] * len(instant)
        if rest:
            done = await self._fetch_pass([instant[i] for i in rest], source)
            for i, outcome in zip(rest, done, strict=True):
                outcomes[i] = outcome
        for i, park in claimed.items():
            if park.reply is None or park.committed is None:
                continue
            try:
                await park.committed
                outcomes[i] = park.reply
            except PeerRingError as exc:
                outcomes[i] = exc
        return [o if o is not None else InvalidOptionError("no outcome") for o in outcomes]

    def _piggyback(self, leader: Leader, slot: Slot) -> None:
        """Claim the messages of ``slot`` (the partition's next APPEND, the only one in
        flight) for the group long-polls parked on ``leader``; their delivery records ride
        on the APPEND (``slot.groups``) and each reply is handed out once it committed.

        The records of the uncommitted sequences carry the leader's epoch: if the append
        fails and a takeover fills those sequences differently, they are stale and the
        new sequencer hands those sequences out again at once (see GroupState.claim)."""
        drained: set[str] = set()  # groups left with nothing to claim in this slot
        for park in leader.parked:
            req = park.req
            if park.wake.done() or park.reply is not None or req.consumer in self._released:
                continue
            state = self.store.state(leader.key, req.config)
            if req.group in drained or req.group not in state.groups:
                continue
            if req.config != leader.config:
                continue
            reply, delta = self._claim_now(leader, req, slot)
            if len(reply.entries) < req.limit:
                drained.add(req.group)  # the group's other long-polls stay parked
            if delta is None:
                continue
            state.merge_group(req.group, delta)  # at once: the next claim must not repeat it
            slot.groups.append((req.group, delta))
            park.reply = reply
            park.committed = slot.on_commit()
            self.piggybacked += 1

    def _read(self, leader: Leader, req: FetchRequest) -> FetchReply:
        log = self.store.state(leader.key, req.config).log
        start = leader.commit + 1 if req.start < 0 else req.start
        if req.start_time is not None:
            start = self._seek(leader, log, req.start_time)
        if start < log.first:
            _, partition = split_key(leader.key)
            raise OffsetOutOfRangeError(
                f"partition {partition}: offset {start} is below retention "
                f"(first retained: {log.first})",
                partition,
                start,
                log.first,
            )
        entries = log.read(start, leader.commit, req.limit) if start <= leader.commit else []
        nxt = entries[-1].seq + 1 if entries else max(start, log.first)
        messages = [e for e in entries if e.kind == MESSAGE]
        return FetchReply(messages, [0] * len(messages), nxt, 0)

    @staticmethod
    def _seek(leader: Leader, log: PartitionLog, when: float) -> int:
        """The first committed sequence stamped at or after ``when`` (the end if none)."""
        try:
            return max(log.seek_time(when, leader.commit), log.first)
        except OffsetOutOfRangeError as exc:
            _, partition = split_key(leader.key)
            raise OffsetOutOfRangeError(
                f"partition {partition}: {exc}", partition, exc.requested, exc.first
            ) from None

    async def _claim(self, leader: Leader, req: FetchRequest, source: str = "") -> FetchReply:
        state = self.store.state(leader.key, req.config)
        if req.consumer in self._released:
            return FetchReply([], [], 0, 0)
        if req.group not in state.groups:
            # A new group starts at the end of the log ("latest") or at its first retained
            # message ("earliest"): messages gone before it existed are not "lost" to it.
            log = state.log
            start = leader.commit + 1 if req.start < 0 else log.first
            if req.start_time is not None:
                start = self._seek(leader, log, req.start_time)
            state.group(req.group)
            await self.leaders.replicate_group(leader, req.group, GroupState(start, start))
        reply, wait = self._claim_begin(leader, req, source)
        if wait is not None:
            await wait
        return reply

    def _claim_begin(
        self, leader: Leader, req: FetchRequest, source: str = ""
    ) -> tuple[FetchReply, Awaitable[None] | None]:
        """Claim for an existing group: the reply, and the replication of the delivery
        records to await before handing it out (None: nothing to wait for)."""
        if req.consumer in self._released:
            return FetchReply([], [], 0, 0), None
        slot = self._inflight(leader)
        reply, delta = self._claim_now(leader, req, slot)
        wait = None
        if delta is not None and self._records_to_requester(leader, req, source, reply):
            # The requester's node is the other copy W needs: it merges the records from
            # the reply (under the epoch fence) before handing anything out, so nothing
            # waits here; the rest of the replicas get them with the partition's next
            # replication request (held as an ack_nowait's ack is).
            follow_up = self.leaders.replicate_group_begin(
                leader, req.group, delta, hold=MAX_ACK_HOLD
            )
            if follow_up is not None:
                spawn(_settled(follow_up))
            reply.records = (leader.ballot.epoch, delta)
            self.records_in_reply += 1
            return reply, None
        if delta is not None:
            wait = self.leaders.replicate_group_begin(leader, req.group, delta)
        if slot is not None and any(e.seq > leader.commit for e in reply.entries):
            # Messages of the APPEND in flight were claimed too: their records replicate
            # alongside it (not after it), and the reply waits for both.
            wait = both(wait, slot.on_commit())
        return reply, wait

    def _records_to_requester(
        self, leader: Leader, req: FetchRequest, source: str, reply: FetchReply
    ) -> bool:
        """Whether the delivery records of ``reply`` may travel in it instead of being on W
        replicas before it leaves: the requesting node merges them from the reply before
        it hands out a message (``req.records_here``) and is one of the partition's
        replicas in this sequencer's ring, W is 2 (this node's copy and the requester's),
        every message handed out is committed (records of the APPEND in flight keep their
        own path), and this node's copy is not fenced off (it counts as one of the two)."""
        if not (req.records_here and reply.entries and source):
            return False
        if source == self.leaders.node.address or source not in leader.preference:
            return False
        if self.leaders.copies(leader.config)[1] != 2:
            return False
        if reply.entries[-1].seq > leader.commit:
            return False
        return self.store.state(leader.key, req.config).log.accepts(leader.ballot.epoch)

    def _inflight(self, leader: Leader) -> Slot | None:
        """The partition's APPEND in flight when a claim may cover it: the only one, of a
        multi-copy partition, starting right after the commit point."""
        if len(leader.slots) != 1 or self.leaders.copies(leader.config)[0] == 1:
            return None
        slot = leader.slots[0]
        if slot.ok is not None or slot.batch[0][0].seq != leader.commit + 1:
            return None
        return slot

    def _claim_now(
        self, leader: Leader, req: FetchRequest, slot: Slot | None = None
    ) -> tuple[FetchReply, GroupState | None]:
        """Claim for an existing group up to the commit point, or with ``slot`` up to the
        end of that APPEND: the reply and the delta to replicate (None: nothing changed).
        Dead letters and expired messages are handled here."""
        state = self.store.state(leader.key, req.config)
        log = state.log
        group = state.group(req.group)
        commit = leader.commit
        claim = state.claim(
            req.group,
            req.consumer,
            req.limit,
            commit=commit,
            end=commit + 1 if slot is None else slot.batch[-1][0].seq + 1,
            epoch=leader.ballot.epoch,
            now=self.clock.monotonic(),
            ack_wait=req.ack_wait,
            max_deliver=req.max_deliver,
        )
        delta = claim.delta
        assert delta is not None
        changed = delta.floor > group.floor or delta.next > group.next
        if not (claim.deliver or delta.done or changed):
            delta = None
        if claim.expired:
            self.expired += claim.expired
            logger.warning(
                "pubsub: group %r lost %d messages of %r to retention before reading them",
                req.group,
                claim.expired,
                leader.key,
            )
        for seq in claim.dead:
            self._schedule_dead_letter(leader, req.group, seq)
        entries = []
        deliveries = []
        for seq, count in claim.deliver:
            entry = log.entries.get(seq) if seq <= commit or slot is None else None
            if entry is None and slot is not None and seq > commit:
                entry = slot.batch[seq - commit - 1][0]
            if entry is not None:
                entries.append(entry)
                deliveries.append(count)
        return FetchReply(entries, deliveries, group.next, claim.expired), delta

    def _schedule_dead_letter(self, leader: Leader, group: str, seq: int) -> None:
        token = (leader.key, group, seq)
        if token in self._dead_inflight:
            return
        self._dead_inflight.add(token)

        async def run() -> None:
            try:
                entry = self.store.state(leader.key, leader.config).log.entries.get(seq)
                if entry is not None:
                    topic, _ = split_key(leader.key)
                    await self._dead_letter(topic, leader.key, group, entry)
                state = self.store.state(leader.key, leader.config).group(group)
                await self.leaders.replicate_group(leader, group, state.mark_done([seq]))
                self.dead_lettered += 1
            except PeerRingError as exc:
                logger.info("pubsub: dead-lettering %r/%d deferred: %s", leader.key, seq, exc)
            finally:
                self._dead_inflight.discard(token)

        spawn(run())

    def _forget_released(self, now: float) -> None:
        if len(self._released) > 1024:
            for consumer in [c for c, until in self._released.items() if until < now]:
                del self._released[consumer]

    # ----------------------------------------------------------------- settle
    async def handle_settle(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        async def run() -> bytes:
            await self.settle(key, SettleRequest.decode(payload))
            return ok_reply()

        return await self._guard(run)

    async def handle_settle_many(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        """SETTLE for several partitions this node sequences; each section on its own."""

        async def run() -> bytes:
            sections = decode_settle_sections(payload)
            outcomes = await asyncio.gather(
                *(self.settle(k, req) for k, req in sections), return_exceptions=True
            )
            return _sections_reply(outcomes, _ok_section)

        return await self._guard(run)

    async def settle(self, key: bytes, req: SettleRequest) -> None:
        """Apply one SETTLE (ack / nak / in-progress / term / release) once W replicas hold
        it; called by the handler and directly on the sequencer's own node."""
        leader = await self.leaders.get(key, req.config)
        group = self.store.state(key, req.config).group(req.group)
        now = self.clock.monotonic()
        if req.op in (ACK, TERM):
            delta = group.finish(req.consumer, req.items)
        elif req.op in (NAK, PROGRESS):
            if len(req.items) != 1 or req.wait < 0:
                raise InvalidOptionError("nak / in_progress settle one message")
            seq, deliveries = req.items[0]
            delta = group.extend(req.consumer, seq, deliveries, now, req.wait)
        elif req.op == RELEASE:
            self._forget_released(now)
            self._released[req.consumer] = now + _RELEASED_MEMORY
            delta = group.release(req.consumer)
        else:
            raise InvalidOptionError(f"unknown settle operation {req.op}")
        # An ack's `wait` (ack_nowait: nobody waits on it) lets it wait that long for the
        # partition's next replication request instead of making one of its own. Older
        # servers ignore `wait` on an ack; a NaN or negative one means no hold.
        hold = min(req.wait, MAX_ACK_HOLD) if req.op == ACK and req.wait > 0 else 0.0
        await self.leaders.replicate_group(leader, req.group, delta, hold=hold)
        if req.op in (NAK, RELEASE):
            leader.notify()
