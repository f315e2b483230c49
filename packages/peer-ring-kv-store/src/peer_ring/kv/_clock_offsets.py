"""Clock offsets to the peers: each node asks every member for its wall clock now and then.

Writes stay ordered whatever the skew (docs/consistency.md), but TTLs and tombstone
collection use wall-clock time, so an operator wants to know when a clock is off. Every
``interval`` seconds the node asks each member for its wall clock over the peer protocol
(the ``kv/clock`` command, on the existing connections) and estimates the offset as in NTP:
``remote - (sent + round_trip / 2)``, with an error of at most half the round trip.

The estimates are served in ``GET /cluster`` (``clock_offsets``) and the largest as the
metric ``peer_ring_kv_store_clock_offset_max_seconds``; an offset beyond ``warn_at``
(default 250 ms, half of the 500 ms :data:`OFFSET_BOUND` under which TTLs are accurate
enough for the docs' promises) is logged as a warning, at most once a minute per peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import Any

from peer_ring.core import Clock, Command, CommandContext, PeerRing, PeerRingError

logger = logging.getLogger(__name__)

#: The command a peer answers with its wall clock (8 bytes, little-endian double).
CLOCK = Command("clock")
#: The skew (seconds) up to which wall-clock based features (TTL, tombstone collection)
#: behave as documented; ordering of writes does not depend on it.
OFFSET_BOUND = 0.5
_WARN_EVERY = 60.0
_TIME = struct.Struct("<d")


class ClockOffsets:
    """This node's estimates of its peers' clock offsets (see the module docs).

    Args:
        node: the node whose members are asked.
        namespace: the namespace :data:`CLOCK` is registered in.
        clock: this node's clock.
        interval: seconds between two rounds.
        warn_at: absolute offset (seconds) past which a warning is logged.
    """

    def __init__(
        self,
        node: PeerRing,
        namespace: str,
        clock: Clock,
        *,
        interval: float = 5.0,
        warn_at: float = OFFSET_BOUND / 2,
    ) -> None:
        self._node = node
        self._namespace = namespace
        self._clock = clock
        self.interval = interval
        self.warn_at = warn_at
        self._offsets: dict[str, tuple[float, float, float]] = {}
        self._warned: dict[str, float] = {}

    def handle(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        """The :data:`CLOCK` handler: this node's wall clock."""
        return _TIME.pack(self._clock.time())

    async def measure(self, peer: str) -> float:
        """Ask ``peer`` once; record and return the estimated offset (peer minus us).

        Raises:
            PeerRingError: the peer did not answer.
        """
        clock = self._clock
        sent, start = clock.time(), clock.monotonic()
        raw = await self._node.call(peer, self._namespace, CLOCK, b"clock", timeout=2.0)
        rtt = clock.monotonic() - start
        remote: float = _TIME.unpack(raw)[0]
        offset = remote - (sent + rtt / 2)
        self._offsets[peer] = (offset, rtt, clock.monotonic())
        if abs(offset) > self.warn_at:
            last = self._warned.get(peer)
            if last is None or clock.monotonic() - last >= _WARN_EVERY:
                self._warned[peer] = clock.monotonic()
                logger.warning(
                    "clock of %s is %+.3f s off this node's (round trip %.3f s); past %.3f s "
                    "TTLs expire early or late by that much: check NTP on both",
                    peer,
                    offset,
                    rtt,
                    self.warn_at,
                )
        return offset

    async def run(self) -> None:
        """Measure every member every ``interval`` seconds until cancelled."""
        node = self._node
        while True:
            members = [m for m in sorted(node.members) if m != node.address]
            for gone in set(self._offsets) - set(members):
                del self._offsets[gone]
            for peer in members:
                with contextlib.suppress(PeerRingError, struct.error, asyncio.TimeoutError):
                    await self.measure(peer)
            await self._clock.sleep(self.interval)

    def snapshot(self) -> dict[str, Any]:
        """JSON-friendly estimates: per peer offset, round trip and age (seconds)."""
        now = self._clock.monotonic()
        peers = {
            peer: {"offset": round(off, 6), "rtt": round(rtt, 6), "age": round(now - at, 3)}
            for peer, (off, rtt, at) in sorted(self._offsets.items())
        }
        worst = max((abs(p["offset"]) for p in peers.values()), default=0.0)
        return {"peers": peers, "max_abs_offset": worst, "warn_at": self.warn_at}
