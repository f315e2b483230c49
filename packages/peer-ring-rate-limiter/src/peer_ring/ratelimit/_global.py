"""Global mode: decide hot keys locally from a copy, reconcile with the owner asynchronously.

Every node keeps a *copy* of a global key's state, refreshed by the owner's broadcasts.
A node that is not the owner decides from its copy and counts what it admitted
(``pending``); every ``sync_interval`` it sends the pending cost to the owner with
``PeerRing.send`` (one message per key, fire and forget). The owner applies it with
``force`` (those hits were already admitted), replicates the new state as in owner mode, and
broadcasts its newest state of each changed global key to every other node once per
``sync_interval``.

**Bound.** The owner broadcasts a key as soon as it applied a node's sync (and its own
decisions at its next tick), so a node's copy lags the owner by about
``sync_interval + RTT``. To keep what the other nodes admit in that lag bounded however
fast the traffic is, a non-owner admits at most
``allowance = max(1, ceil(rate * (sync_interval + rtt_budget)))`` cost per sync interval
from its copy, with ``rate = limit / period``. The owner's decisions are exact, so the
cluster admits at most ``(nodes - 1) * allowance`` more than the limit's own definition
allows over any window, i.e. about ``(nodes - 1) * rate * (sync_interval + RTT)``.
The price: a non-owner alone admits at most ``allowance`` per interval even when the limit
has room (a burst on one non-owner node is smoothed over several intervals), and a hit whose
cost exceeds the allowance is decided by the owner (a forwarded, exact decision).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from peer_ring.core import Command, CommandContext, PeerRing
from peer_ring.ratelimit._algorithms import decide
from peer_ring.ratelimit._decision import Decision
from peer_ring.ratelimit._limit import Limit
from peer_ring.ratelimit._state import State
from peer_ring.ratelimit._wire import decode_entry, decode_hit, encode_entry, encode_hit

if TYPE_CHECKING:
    from peer_ring.ratelimit._limiter import RateLimiter

#: Hits a node admitted from its copy, for the owner to record (``force``).
SYNC = Command("sync", mutates=True, hinted=False)
#: The owner's newest entry of a global key, to every node's copy.
BCAST = Command("bcast")

GLOBAL = "global"


@dataclass(slots=True)
class _Copy:
    limit: Limit
    state: State | None = None
    seq: int = 0
    pending: int = 0  # admitted here, not yet sent to the owner
    spent: int = 0  # admitted here during the current sync interval


class GlobalSync:
    """The global-mode half of a :class:`RateLimiter` (one per limiter)."""

    def __init__(self, limiter: RateLimiter, sync_interval: float, rtt_budget: float) -> None:
        self._rl = limiter
        self.sync_interval = sync_interval
        self.rtt_budget = rtt_budget
        self._copies: dict[bytes, _Copy] = {}
        self._hot: dict[bytes, Limit] = {}  # global keys this node owns
        self._dirty: set[bytes] = set()
        self._task: asyncio.Task[None] | None = None
        self._node: PeerRing | None = None
        self._ns = ""

    def register(self, node: PeerRing, namespace: str) -> None:
        """Register the SYNC and BCAST handlers."""
        self._node, self._ns = node, namespace
        node.register(namespace, SYNC, self._on_sync)
        node.register(namespace, BCAST, self._on_bcast)

    def start(self) -> None:
        """Start the periodic reconciliation."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the periodic reconciliation."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def allowance(self, limit: Limit) -> int:
        """Cost a non-owner may admit from its copy per sync interval."""
        return max(1, math.ceil(limit.rate * (self.sync_interval + self.rtt_budget)))

    async def hit(self, kb: bytes, limit: Limit, cost: int) -> Decision:
        """Decide ``kb`` in global mode."""
        node = self._rl.node
        p, here = self._rl.route(kb)
        if here:
            self._hot[kb] = limit
            out = self._rl.decide_here(kb, p, limit, cost)
            d = out if isinstance(out, Decision) else await out
            return dataclasses.replace(d, source=GLOBAL)
        if cost > self.allowance(limit):
            # Larger than a non-owner may ever admit alone: the owner decides it exactly.
            self._copies.setdefault(kb, _Copy(limit))
            return await self._rl.owner_hit(kb, limit, cost)
        copy = self._copies.get(kb)
        if copy is None:
            copy = self._copies[kb] = _Copy(limit)
        copy.limit = limit
        now = node.clock.monotonic()
        new, d = decide(copy.state, limit, cost, now)
        if cost > 0 and d.allowed and copy.spent + cost > self.allowance(limit):
            # The copy has room but this node spent its share of the interval.
            return Decision(False, d.limit, 0, d.reset_after, self.sync_interval, GLOBAL)
        if new is not copy.state:
            copy.state = new
            copy.pending += cost
            if cost > 0:
                copy.spent += cost
        return dataclasses.replace(d, source=GLOBAL)

    def on_owner_change(self, kb: bytes) -> None:
        """The owner's entry of ``kb`` changed: broadcast it at the next interval."""
        if kb in self._hot:
            self._dirty.add(kb)

    def sweep(self) -> None:
        """Forget copies with nothing pending whose state is at rest."""
        for kb in [k for k, c in self._copies.items() if c.pending == 0 and c.state is None]:
            del self._copies[kb]

    async def _loop(self) -> None:
        clock = self._rl.node.clock
        while True:
            await clock.sleep(self.sync_interval)
            self.flush()

    def flush(self) -> None:
        """Send pending hits to owners and broadcast this node's changed global keys."""
        node = self._rl.node
        for kb, copy in self._copies.items():
            if copy.pending:
                node.send(self._ns, SYNC, kb, encode_hit(copy.limit, copy.pending))
                self._rl.metrics.global_syncs += 1
                copy.pending = 0
            copy.spent = 0
        for kb in self._dirty:
            self._broadcast(kb)
        self._dirty.clear()

    def _broadcast(self, kb: bytes) -> None:
        node = self._rl.node
        entry = self._rl.store.get(kb)
        others = [a for a in node.members if a != node.address]
        if entry is not None and others:
            now = node.clock.monotonic()
            node.send(self._ns, BCAST, kb, encode_entry(kb, entry, now), nodes=others)

    def _on_sync(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        limit, cost = decode_hit(payload)
        self._hot[key] = limit
        out = self._rl.decide_here(key, ctx.partition, limit, cost, force=True)
        if not isinstance(out, Decision):
            task = asyncio.get_running_loop().create_task(_drain(out))
            task.add_done_callback(lambda t: t.exception())
        # At once, not at the next tick: a copy then lags by one sync interval plus the
        # round trip, which is what the allowance covers.
        self._dirty.discard(key)
        self._broadcast(key)
        return b""

    def _on_bcast(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        node = self._rl.node
        now = node.clock.monotonic()
        _, entry = decode_entry(payload, now)
        copy = self._copies.get(key)
        if copy is None:
            return b""  # not a key this node uses in global mode
        if entry.seq < copy.seq:
            return b""
        copy.seq = entry.seq
        state = entry.state if entry.expires > now else None
        if copy.pending > 0:
            # Hits admitted here since the last sync are not in the owner's state yet.
            state, _ = decide(state, copy.limit, copy.pending, now, force=True)
        copy.state = state
        return b""


async def _drain(out: object) -> None:
    await out  # type: ignore[misc]
