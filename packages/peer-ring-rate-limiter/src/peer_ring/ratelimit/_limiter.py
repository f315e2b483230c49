"""The :class:`RateLimiter`: owner-decided limits on a peer-ring cluster."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from peer_ring.core import (
    Clock,
    Command,
    CommandContext,
    Discovery,
    PartitionNotReadyError,
    PeerRing,
    PeerRingConfig,
    PeerRingError,
    SystemClock,
    Transport,
)
from peer_ring.ratelimit._algorithms import decide, expires_at
from peer_ring.ratelimit._batcher import Batcher
from peer_ring.ratelimit._decision import Decision
from peer_ring.ratelimit._errors import (
    InvalidCostError,
    KeyTooLongError,
    NotOwnerError,
    OwnerUnavailableError,
    RateLimitError,
)
from peer_ring.ratelimit._estimate import LocalEstimates
from peer_ring.ratelimit._forwarding import (
    HITS,
    HITS_RELAY,
    RELAYED,
    STATE,
    STATES,
    STATES_RELAY,
    forward_batcher,
    on_relayed,
    on_states,
    on_states_relay,
    send_states,
)
from peer_ring.ratelimit._global import GlobalSync
from peer_ring.ratelimit._hits import answer_hits
from peer_ring.ratelimit._limit import MAX_LIMIT, Limit
from peer_ring.ratelimit._metrics import RateLimiterMetrics
from peer_ring.ratelimit._policy import FailPolicy, Mode
from peer_ring.ratelimit._records import encode_packed
from peer_ring.ratelimit._relay import RelayWaits, decode_relay_hits
from peer_ring.ratelimit._replicator import Replicator
from peer_ring.ratelimit._store import StateStore
from peer_ring.ratelimit._wire import (
    Entry,
    decode_entry,
    decode_hit,
    encode_decision,
    encode_hit,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Default longest key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: Largest absolute cost of one hit.
MAX_COST = MAX_LIMIT
#: Default bound of forwarded batches in flight per owner (see ``max_batches_in_flight``).
MAX_BATCHES_IN_FLIGHT: int | None = 1
#: Default bound of batches in flight to one node while each of them holds a single hit (or
#: state): beside those, another batch may leave at once (see ``light_in_flight``).
LIGHT_IN_FLIGHT: int | None = 4
#: Default largest forwarded batch whose decisions the owner relays (see ``relay_max_batch``).
RELAY_MAX_BATCH: int | None = 4
#: Default bound of hits per forwarded batch (see ``max_batch_size``).
MAX_BATCH_SIZE: int | None = 256

#: Decide a hit on the key's owner (one key; still answered, this node no longer sends it).
#: Neither ``reads`` nor ``hinted`` (nor ``HITS``): the core must never send a hit elsewhere
#: when the owner fails (a previous holder or a substitute may have a stale state, or none,
#: and would decide alongside the owner if it is only slow). A hit the owner cannot take
#: gets the fail policy instead (see ``_on_hit``).
HIT = Command("hit", mutates=True, hinted=False)
#: Forget a key (a tombstone with the next seq), decided on the owner.
RESET = Command("reset", mutates=True, hinted=False)


class RateLimiter:
    """A distributed rate limiter embedded in the service.

    Args:
        discovery: how this node finds the others (a new :class:`PeerRing` is created).
        node: an existing, not yet started :class:`PeerRing` shared with other
            applications (give either ``discovery`` or ``node``).
        replication: copies of each key's state (owner included); default 2, or the
            node's ``config.replication`` when ``node`` is given.
        state_quorum: acknowledgements (owner included) a decision's state needs before
            the decision is returned; default: ``replication`` (every replica, sloppy
            substitutes allowed).
        mode: default :class:`Mode` (per call override with ``hit(..., mode=)``).
        fail_policy: what a hit gets when the owner is unreachable (default
            ``LOCAL_ESTIMATE``).
        timeout: seconds a forwarded hit may take before the fail policy applies.
        batch_window: extra seconds to gather forwarded hits before sending them (0: send
            at the next event-loop turn, which already batches concurrent hits).
        max_batches_in_flight: batches awaiting their answer at once, per owner (forwarded
            hits) and per replica node (new states); what arrives meanwhile waits and
            leaves together in the next batch (None: no bound, one batch per loop turn).
        light_in_flight: while every batch in flight to a node holds a single hit (or
            state), another batch may leave at once, up to this many in flight (None: only
            ``max_batches_in_flight``). At a moderate rate a lone hit then does not wait
            for the previous hit's round trip; under load a batch in flight holds many
            hits and ``max_batches_in_flight`` applies.
        max_batch_size: hits per forwarded batch at most (None: no bound). ``timeout``
            applies to each batch sent, so a batch holding a whole burst would make the
            owner work through the burst within ``timeout``; with the bound, the backlog
            waits on this node (untimed) and a busy owner is not taken for an unreachable
            one. When a batch finds the owner unreachable, its waiting backlog gets the
            fail policy at once.
        relay: at replication 2, let the key's other replica answer a forwarded hit (1.5
            round trips instead of 2 when the forwarder is not a replica; see the README's
            "Relayed decisions"). False: the owner answers every forwarded hit, and this
            node neither sends nor accepts the relay protocol's messages (as a node of an
            older release).
        relay_max_batch: the owner relays the decisions of a forwarded batch of at most
            this many hits (None: any batch). A relayed hit costs one request more between
            nodes (the replica's), which a light load does not feel and a heavy one does:
            at 64 hits in flight per process batches hold about 20 hits, and relaying them
            cost CPU per decision (README, Performance).
        sync_interval: global mode: seconds between two reconciliations with the owner.
        rtt_budget: global mode: the round trip assumed by the per-node allowance.
        retain: seconds expired entries are remembered (ordering of late records).
        max_key_bytes: longest key accepted.
        metrics: a :class:`RateLimiterMetrics` (default: a new one with its own registry).
        config, transport, clock: for the node created from ``discovery``.
        namespace: the command namespace on the node (two limiters on one node need two).
    """

    def __init__(
        self,
        discovery: Discovery | None = None,
        *,
        node: PeerRing | None = None,
        replication: int | None = None,
        state_quorum: int | None = None,
        mode: Mode | str = Mode.OWNER,
        fail_policy: FailPolicy | str = FailPolicy.LOCAL_ESTIMATE,
        timeout: float = 1.0,
        batch_window: float = 0.0,
        max_batches_in_flight: int | None = MAX_BATCHES_IN_FLIGHT,
        light_in_flight: int | None = LIGHT_IN_FLIGHT,
        max_batch_size: int | None = MAX_BATCH_SIZE,
        relay: bool = True,
        relay_max_batch: int | None = RELAY_MAX_BATCH,
        sync_interval: float = 0.1,
        rtt_budget: float = 0.01,
        retain: float = 30.0,
        max_key_bytes: int = MAX_KEY_BYTES,
        metrics: RateLimiterMetrics | None = None,
        config: PeerRingConfig | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
        namespace: str = "ratelimit",
    ) -> None:
        if (discovery is None) == (node is None):
            raise RateLimitError("give exactly one of discovery= or node=")
        if node is None:
            assert discovery is not None
            base = config or PeerRingConfig()
            repl = replication or 2
            self._node = PeerRing(
                discovery,
                config=dataclasses.replace(base, replication=repl),
                transport=transport,
                clock=clock or SystemClock(),
            )
        else:
            self._node = node
            repl = replication or node.config.replication
        # A node given by the caller may be shared with other applications: only the
        # limiter that created its node stops it.
        self._owns_node = node is None
        self._replication = repl
        self._state_quorum = min(state_quorum or repl, repl)
        self._mode = Mode(mode)
        self._fail_policy = FailPolicy(fail_policy)
        self._timeout = timeout
        self._max_key_bytes = max_key_bytes
        self._ns = namespace
        self._clock = self._node.clock
        self.metrics = metrics or RateLimiterMetrics()
        self._store = StateStore(self._clock.monotonic, self._node.partition_for_key, retain)
        self.metrics.bind_store(self._store)
        self._estimates = LocalEstimates()
        self._batch_window = batch_window
        self._max_batches = max_batches_in_flight
        self._light = light_in_flight
        self._max_batch_size = max_batch_size
        # One batcher per owner: a slow or dead owner holds back only its own keys' hits.
        self._forward: dict[str, Batcher[tuple[bytes, bytes, int], Decision]] = {}
        # One replicator per replica node, for the same reason.
        self._replicate: dict[str, Replicator] = {}
        self._relay = relay
        if relay_max_batch is not None and relay_max_batch < 0:
            raise RateLimitError(f"relay_max_batch must be >= 0, got {relay_max_batch}")
        self._relay_max = relay_max_batch
        self._relay_waits = RelayWaits()
        # Peers that answered UnknownCommandError to the relay protocol's commands.
        self._old_protocol: set[str] = set()
        self._global = GlobalSync(self, sync_interval, rtt_budget)
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_every = max(1.0, retain / 2)
        self._node.register(self._ns, HITS, self._on_hits)
        self._node.register(self._ns, HIT, self._on_hit)
        self._node.register(self._ns, STATE, self._on_state)
        self._node.register(self._ns, STATES, self._on_states)
        if relay:
            # Without relay this node speaks only the old protocol, as a node of an older
            # release does: its peers get UnknownCommandError and send it hits and states.
            self._node.register(self._ns, HITS_RELAY, self._on_hits_relay)
            self._node.register(self._ns, STATES_RELAY, self._on_states_relay)
            self._node.register(self._ns, RELAYED, self._on_relayed)
        self._node.register(self._ns, RESET, self._on_reset)
        self._node.register_hooks(self._ns, self._store)
        self._global.register(self._node, self._ns)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def node(self) -> PeerRing:
        """The underlying peer-ring node."""
        return self._node

    @property
    def store(self) -> StateStore:
        """This node's key states (introspection and tests)."""
        return self._store

    @property
    def replication(self) -> int:
        """Copies of each key's state."""
        return self._replication

    async def start(self) -> None:
        """Start the node (unless it was given already running) and background work."""
        if not self._node.running:
            await self._node.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())
        self._global.start()

    async def stop(self) -> None:
        """Stop background work, and the node if this limiter created it. Idempotent."""
        await self._global.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for forward in list(self._forward.values()):
            await forward.close()
        # Relayed hits handed over by the closed batches: each ends by its relay or timer.
        await self._relay_waits.wait_idle()
        for replicate in list(self._replicate.values()):
            await replicate.close()
        if self._owns_node and self._node.running:
            await self._node.stop()

    async def leave(self, deadline: float | None = None) -> None:
        """Hand this node's key states to the other nodes (``PeerRing.leave``), then stop."""
        try:
            await self._node.leave(deadline)
        finally:
            await self.stop()

    async def __aenter__(self) -> RateLimiter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _sweep_loop(self) -> None:
        while True:
            await self._clock.sleep(self._sweep_every)
            await self._store.sweep_gradually()
            self._global.sweep()
            self._estimates.sweep(self._clock.monotonic())

    # -- public API --------------------------------------------------------------------

    async def hit(
        self,
        key: str | bytes,
        limit: Limit,
        cost: int = 1,
        *,
        mode: Mode | str | None = None,
    ) -> Decision:
        """Count ``cost`` hits of ``key`` against ``limit`` and return the decision.

        ``cost`` 0 peeks, a negative cost refunds. Raises :class:`KeyTooLongError`,
        :class:`InvalidCostError` for bad input, :class:`OwnerUnavailableError` only with
        ``FailPolicy.RAISE``.
        """
        # The checks are written for the common case (str key, int cost, Limit): this is
        # the hot path of every decision (tools/bench ratelimit, "local").
        kb = key.encode() if type(key) is str else self._key(key)
        if len(kb) > self._max_key_bytes:
            raise KeyTooLongError(f"key of {len(kb)} bytes exceeds {self._max_key_bytes}")
        if type(cost) is not int or not -MAX_COST <= cost <= MAX_COST:
            _check_cost(cost)
        if not isinstance(limit, Limit):
            raise RateLimitError(f"limit must be a Limit, got {type(limit).__name__}")
        m = self._mode if mode is None else Mode(mode)
        if m is Mode.GLOBAL:
            d = await self._global.hit(kb, limit, cost)
        else:
            p, here = self.route(kb)
            if here:
                out = self.decide_here(kb, p, limit, cost)
                d = out if type(out) is Decision else await out  # type: ignore[misc]
            else:
                d = await self._forward_hit(kb, p, limit, cost)
        self.metrics.decision(limit.label, d)
        return d

    async def peek(self, key: str | bytes, limit: Limit) -> Decision:
        """The key's state against ``limit`` without counting anything (a cost-0 hit)."""
        return await self.hit(key, limit, 0)

    async def refund(self, key: str | bytes, limit: Limit, amount: int = 1) -> Decision:
        """Give back ``amount`` hits (never beyond the key's initial allowance)."""
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise InvalidCostError(f"refund amount must be a non-negative integer, got {amount!r}")
        return await self.hit(key, limit, -amount)

    async def reset(self, key: str | bytes) -> None:
        """Forget ``key`` everywhere: its next hit starts from a fresh allowance."""
        kb = self._key(key)
        owner = self._node.preference_list(kb, 1)[0]
        p = self._node.partition_for_key(kb)
        if owner == self._node.address and self._node.partition_ready(p):
            await self._reset_local(kb, p)
            return
        try:
            await self._node.execute(self._ns, RESET, kb, b"", replication=1, timeout=self._timeout)
        except PeerRingError as exc:
            raise OwnerUnavailableError(f"cannot reset {key!r}: {exc}") from exc

    # -- owner mode --------------------------------------------------------------------

    def _key(self, key: str | bytes) -> bytes:
        if isinstance(key, str):
            kb = key.encode()
        elif isinstance(key, bytes | bytearray | memoryview):
            kb = bytes(key)
        else:
            raise RateLimitError(f"a key is str or bytes, got {type(key).__name__}")
        if len(kb) > self._max_key_bytes:
            raise KeyTooLongError(f"key of {len(kb)} bytes exceeds {self._max_key_bytes}")
        return kb

    def route(self, kb: bytes) -> tuple[int, bool]:
        """``(partition, decide here)`` of ``kb``: this node owns it and holds its partition."""
        node = self._node
        ring = node.ring
        p = ring.partition_for_key(kb)  # hashed once: the hot path of every decision
        return p, ring.owner(p) == node.address and node.partition_ready(p)

    async def owner_hit(self, kb: bytes, limit: Limit, cost: int) -> Decision:
        """Decide ``kb`` on its owner (locally when this node is the owner)."""
        p, here = self.route(kb)
        if here:
            out = self.decide_here(kb, p, limit, cost)
            return out if isinstance(out, Decision) else await out
        return await self._forward_hit(kb, p, limit, cost)

    async def _forward_hit(self, kb: bytes, p: int, limit: Limit, cost: int) -> Decision:
        self.metrics.forwarded += 1
        try:
            owner = self._node.ring.owner(p)
            batcher = self._forward.get(owner)
            if batcher is None:
                batcher = self._forward[owner] = self._forward_batcher(owner)
            return await batcher.submit((kb, encode_hit(limit, cost), p))
        except (TimeoutError, PeerRingError, RateLimitError) as exc:
            return self._fail(kb, limit, cost, exc)

    def _forward_batcher(self, owner: str) -> Batcher[tuple[bytes, bytes, int], Decision]:
        return forward_batcher(self, owner)

    def _relays_to(self, peer: str) -> bool:
        """Whether ``peer`` is sent the relay protocol's messages (see ``_relay``)."""
        return self._relay and peer not in self._old_protocol

    def decide_here(
        self, kb: bytes, partition: int, limit: Limit, cost: int, *, force: bool = False
    ) -> Decision | Awaitable[Decision]:
        """Decide on this node (the owner) and replicate the new state before answering."""
        d, changed = self._decide(kb, partition, limit, cost, force)
        if not changed or self._replication <= 1:
            return d
        return self._replicated(kb, partition, d)

    def _decide(
        self, kb: bytes, partition: int, limit: Limit, cost: int, force: bool
    ) -> tuple[Decision, bool]:
        """Decide and store the new state; ``(decision, whether the state changed)``."""
        now = self._clock.monotonic()
        entry = self._store.get(kb, partition)
        state = entry.state if entry is not None and entry.expires > now else None
        new, d = decide(state, limit, cost, now, force=force)
        if new is state:
            return d, False
        seq = (entry.seq if entry is not None else 0) + 1
        self._store.put(kb, Entry(seq, new, expires_at(new, limit, now)), partition)
        self._global.on_owner_change(kb)
        return d, True

    def _replicated(self, kb: bytes, partition: int, result: T, skip: str = "") -> T | Awaitable[T]:
        """``result`` once the newest entry of ``kb`` reached its other replicas (batched
        per replica node), ``skip`` excepted (it gets the entry with the answer)."""
        me = self._node.address
        replicas = self._node.ring.preference_list(partition, self._replication)
        waits = [
            self.replicator(r).submit(kb, partition) for r in replicas if r != me and r != skip
        ]
        if not waits:
            return result
        return _after(waits, result)

    def replicator(self, replica: str) -> Replicator:
        """The replication queue of new states for ``replica`` (created on first use)."""
        rep = self._replicate.get(replica)
        if rep is None:

            async def send(keys: Mapping[bytes, int], relays: list[bytes]) -> None:
                await send_states(self, replica, keys, relays)

            rep = self._replicate[replica] = Replicator(send, self._max_batches, self._light)
        return rep

    async def _reset_local(self, kb: bytes, partition: int) -> None:
        entry = self._store.get(kb, partition)
        if entry is None:
            return
        self._store.put(kb, Entry(entry.seq + 1, None, entry.expires), partition)
        self._global.on_owner_change(kb)
        if self._replication > 1:
            replicated = self._replicated(kb, partition, None)
            if replicated is not None:
                await replicated

    def _fail(self, kb: bytes, limit: Limit, cost: int, exc: BaseException) -> Decision:
        self.metrics.owner_unavailable += 1
        policy = self._fail_policy
        logger.debug("owner of %r unavailable (%s): %s", kb, exc, policy.value)
        if policy is FailPolicy.RAISE:
            raise OwnerUnavailableError(f"owner of {kb!r} unreachable: {exc}") from exc
        if policy is FailPolicy.FAIL_OPEN:
            return Decision(True, limit.limit, limit.limit, 0.0, 0.0, policy.value)
        if policy is FailPolicy.FAIL_CLOSED:
            return Decision(False, limit.limit, 0, limit.period, limit.period, policy.value)
        return self._estimates.decide(
            kb, limit, cost, len(self._node.members), self._clock.monotonic()
        )

    # -- handlers (run on the owner / replicas) ----------------------------------------

    def _on_hit(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes | Awaitable[bytes]:
        limit, cost = decode_hit(payload)
        _check_cost(cost)
        node = self._node
        # Decide only as the owner in this node's own ring, on a partition it holds in full:
        # during a ring change the sender and this node may disagree, and a new owner still
        # pulling the partition lacks the state. Refusing sends the hit to the fail policy.
        # ctx.partition: computed by this node from the key (HIT mutates), not the sender's.
        p = ctx.partition
        replicas = node.ring.preference_list(p, self._replication)
        if replicas[0] != node.address:
            raise NotOwnerError(f"{node.address} does not own {key!r} in its ring")
        if not node.partition_ready(p):
            raise PartitionNotReadyError(node.address, p)
        d, changed = self._decide(key, p, limit, cost, False)
        answer = encode_decision(d)
        if not changed or self._replication <= 1:
            return answer
        source = ctx.source
        if source in replicas[1:]:
            # The forwarder is another replica of the key: the new entry travels with the
            # answer and the forwarder stores it before releasing the decision, so the
            # guarantee is the same as a replication message's (an admitted hit's state is
            # on every replica), one message fewer. At replication 2 in a 3-node ring,
            # half of the forwarded hits come from the key's second replica.
            packed = self._store.get_packed(key, p)
            assert packed is not None  # _decide stored it
            answer += encode_packed(key, packed, self._clock.monotonic())
            self.metrics.states_with_answer += 1
            return self._replicated(key, p, answer, skip=source)
        return self._replicated(key, p, answer)

    def _on_hits(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes | Awaitable[bytes]:
        return answer_hits(self, ctx.source, payload)

    def _on_hits_relay(
        self, ctx: CommandContext, key: bytes, payload: bytes
    ) -> bytes | Awaitable[bytes]:
        batch_id, hits = decode_relay_hits(payload)
        return answer_hits(self, ctx.source, hits, batch_id)

    def _on_states(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        on_states(self, payload)
        return b""

    def _on_states_relay(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        on_states_relay(self, payload)
        return b""

    def _on_relayed(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        on_relayed(self, payload)
        return b""

    def _on_state(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        if ctx.local:
            return b""  # the owner itself: it stored the entry before replicating it
        rkey, entry = decode_entry(payload, self._clock.monotonic())
        if rkey != key:
            raise RateLimitError("state record for another key")
        self._store.merge(key, entry, ctx.partition)
        return b""

    def _on_reset(self, ctx: CommandContext, key: bytes, payload: bytes) -> Awaitable[bytes]:
        return _empty(self._reset_local(key, ctx.partition))

    def stats(self) -> dict[str, Any]:
        """Counters of this node (also exported as Prometheus metrics), plus the forwarded
        hits and replicated states that waited for a batch in flight to be answered
        (``hits_waited``, ``states_waited``)."""
        out = self.metrics.snapshot()
        out["hits_waited"] = sum(b.waited for b in self._forward.values())
        out["states_waited"] = sum(r.waited for r in self._replicate.values())
        out["relays_received"] = self._relay_waits.received
        out["relays_late"] = self._relay_waits.late
        return out


def _check_cost(cost: object) -> None:
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise InvalidCostError(f"cost must be an integer, got {cost!r}")
    if abs(cost) > MAX_COST:
        raise InvalidCostError(f"cost {cost} outside [-{MAX_COST}, {MAX_COST}]")


async def _after(waits: list[asyncio.Future[None]], result: T) -> T:
    for fut in waits:
        await fut
    return result


async def _empty(out: Awaitable[None]) -> bytes:
    await out
    return b""
