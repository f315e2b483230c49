"""Failure detection: probes, suspicion, down and back, incarnations, departures.

The **probe loop** pings every discovered peer each ``probe_interval``: a failure feeds
suspicion (kept by :class:`~peer_ring.core._membership.Membership`), a peer suspected
without interruption for ``down_after`` is marked down (the ring shrinks, the survivors
re-replicate), a peer that answers again is put back, a peer that says it is leaving is
taken out, and one that restarted after leaving (a new incarnation) comes back.

A peer that *departs* (discovery stops listing it, or it announced a leave) is forgotten
by the transport: its connection and reconnect loop end, so that a cluster whose members
come and go (rolled pods) does not keep one reconnect loop per departed address. A peer
that left but is still listed is only contacted by the probe, which drops the connection
again after each failed probe (see :meth:`FailureDetector.probe`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from peer_ring.core._errors import PeerRingError
from peer_ring.core._sync._clock_offsets import ClockOffsets
from peer_ring.core._sync._context import HANDOFF_BATCH, SyncContext
from peer_ring.core._sync._wire import (
    FLAG_LEAVING,
    decode_partitions,
    decode_ping,
    decode_ping_wall,
    encode_partitions,
    encode_ping,
)

logger = logging.getLogger(__name__)


class FailureDetector:
    """Probes peers and turns round-trip outcomes into suspicion, down and back.

    Args:
        ctx: the node's sync context.
        peer_back: called when a suspected or down peer is reachable again (the facade
            retries pulls and hint deliveries at once).
    """

    def __init__(self, ctx: SyncContext, peer_back: Callable[[str], None]) -> None:
        self._ctx = ctx
        self._peer_back = peer_back
        self._incarnations: dict[str, int] = {}
        self._probing: set[str] = set()
        self.wake = asyncio.Event()
        self.probes_failed = 0
        self.peers_forgotten = 0
        self.clock_offsets = ClockOffsets(ctx.clock, ctx.cfg.max_clock_offset)

    # -- round-trip outcomes ---------------------------------------------------------------

    def peer_ok(self, peer: str) -> None:
        """A round trip initiated by this node succeeded: ``peer`` is reachable."""
        membership = self._ctx.membership
        if membership.clear(peer):
            self._peer_back(peer)
        if membership.is_down(peer):
            self.mark_up(peer)

    def peer_failed(self, peer: str) -> None:
        """A request to ``peer`` failed at the transport level (unreachable, timeout)."""
        self._ctx.membership.suspect(peer)

    def inbound(self, peer: str) -> None:
        """``peer`` sent this node a request (called for every request: keep it cheap).

        That it can send proves little (a peer too slow to answer, or reachable one way
        only, still sends), so a suspected or down peer is not cleared here: it is probed
        at once, and only the answer to the probe clears it.
        """
        membership = self._ctx.membership
        if membership.maybe_suspected(peer) or membership.is_down(peer):
            self.probe_soon(peer)

    def reachability(self, peer: str, reachable: bool) -> None:
        """Transport reachability report (a stream to ``peer`` opened or broke)."""
        membership = self._ctx.membership
        if not reachable:
            membership.suspect(peer)
            return
        # The peer accepted a connection this node opened: a real answer.
        if membership.clear(peer):
            self._peer_back(peer)
        if membership.is_down(peer):
            self.probe_soon(peer)

    def departed(self, peer: str) -> None:
        """``peer`` left the member set (no longer discovered, or announced a leave)."""
        membership = self._ctx.membership
        if peer == self._ctx.me:
            return
        if membership.left_incarnation(peer) is not None and peer in membership.discovered:
            # Still serving the pulls of its leave: forgotten once a probe fails (it exited).
            return
        self._probing.discard(peer)
        self.clock_offsets.forget(peer)
        self.peers_forgotten += 1
        logger.debug("forgetting the connection to departed peer %s", peer)
        self._ctx.transport.forget_peer(peer)

    def mark_up(self, peer: str) -> None:
        """Put a down peer back in the ring, then ask it to catch up."""
        if self._ctx.membership.mark_up(peer):
            # It missed every write while it was out of the ring (paused, partitioned):
            # ask it to pull what it shares with us, rather than wait for anti-entropy.
            self._ctx.spawn(self._catch_up(peer), "peer-ring-catch-up")

    async def _catch_up(self, peer: str) -> None:
        ctx = self._ctx
        ring = ctx.membership.ring
        pending = ctx.table.pending
        shared = [
            p
            for p in sorted(ctx.table.replicated)
            if p not in pending and peer in ring.preference_list(p, ctx.n)
        ]
        confirmed = 0
        for i in range(0, len(shared), HANDOFF_BATCH):
            batch = shared[i : i + HANDOFF_BATCH]
            try:
                data = await ctx.ask(
                    peer, "handoff", encode_partitions(batch), ctx.cfg.handoff_timeout
                )
            except PeerRingError as exc:
                logger.info("catch-up of %s stopped: %s (anti-entropy will finish)", peer, exc)
                return
            confirmed += len(decode_partitions(data))
        logger.info(
            "node %s: %s is back; it synced %d of the %d partition(s) we share",
            ctx.me,
            peer,
            confirmed,
            len(shared),
        )

    # -- incarnations ----------------------------------------------------------------------

    def observe_incarnation(self, peer: str, incarnation: int, flags: int, confirmed: bool) -> None:
        """What a ping (sent or answered) tells about ``peer``'s life."""
        known = self._incarnations.get(peer)
        self._incarnations[peer] = incarnation
        membership = self._ctx.membership
        if flags & FLAG_LEAVING:
            membership.mark_left(peer, incarnation)
            return
        left = membership.left_incarnation(peer)
        if left is not None and left != incarnation:
            membership.forget_left(peer)
        elif known is not None and known != incarnation:
            logger.info("peer %s restarted (new incarnation)", peer)
        if confirmed and membership.is_down(peer):
            self.mark_up(peer)

    def note_leaving(self, peer: str, incarnation: int) -> None:
        """``peer`` (incarnation ``incarnation``) told this node it leaves."""
        self._incarnations[peer] = incarnation
        self._ctx.membership.mark_left(peer, incarnation)

    # -- probes ----------------------------------------------------------------------------

    def probe_soon(self, peer: str) -> None:
        """Probe ``peer`` now, in a task (once at a time per peer)."""
        if peer not in self._probing and self._ctx.running:
            self._probing.add(peer)
            self._ctx.spawn(self.probe(peer), "peer-ring-probe")

    async def loop(self) -> None:
        """Probe every discovered peer each ``probe_interval`` (runs until cancelled)."""
        ctx = self._ctx
        while True:
            self.wake.clear()
            peers = [a for a in ctx.membership.discovered if a != ctx.me]
            if peers:
                await asyncio.gather(*(self.probe(p) for p in peers))
            self.check_down()
            await ctx.sleep_or(self.wake, ctx.cfg.probe_interval)

    async def probe(self, peer: str) -> None:
        """Ping ``peer``; its answer carries its incarnation, whether it leaves and its
        wall clock (for the clock-offset estimate, see :mod:`._clock_offsets`)."""
        ctx = self._ctx
        flags = FLAG_LEAVING if ctx.leaving else 0
        clock = ctx.clock
        t0, m0 = clock.time(), clock.monotonic()
        try:
            payload = await ctx.ask(
                peer, "ping", encode_ping(ctx.incarnation, flags), ctx.cfg.probe_timeout
            )
        except PeerRingError:
            self.probes_failed += 1
            if ctx.membership.left_incarnation(peer) is not None:
                # It left and does not answer (it exited): only this probe, once per
                # interval, looks for its restart; no reconnect loop in between.
                ctx.transport.forget_peer(peer)
            return
        finally:
            self._probing.discard(peer)
        t1, m1 = clock.time(), clock.monotonic()
        try:
            incarnation, peer_flags = decode_ping(payload)
        except ValueError:
            return
        remote = decode_ping_wall(payload)
        if remote is not None:
            self.clock_offsets.record(peer, t0, t1, remote, m1 - m0)
        self.observe_incarnation(peer, incarnation, peer_flags, confirmed=True)

    def check_down(self) -> None:
        """Mark down the peers suspected without interruption for ``down_after``."""
        after = self._ctx.cfg.down_after
        if after is None:
            return
        membership = self._ctx.membership
        # Sorted, not in set (string-hash) order: each mark_down rebuilds the ring and
        # plans data movement, so two peers marked down together must go in a fixed order.
        for peer in sorted(membership.suspected):
            if peer in membership.down or membership.left_incarnation(peer) is not None:
                continue
            if membership.suspected_for(peer) >= after:
                membership.mark_down(peer)
