"""Clock offsets to peers, estimated from the failure detector's probes (NTP style).

Every probe answer carries the responder's wall clock (``clock.time()``). The prober reads
its own wall clock before sending (``t0``) and after the answer (``t1``) and estimates

* ``offset = remote - (t0 + t1) / 2`` (how far the peer's clock is ahead of this node's),
* ``rtt`` = the round trip (measured on the monotonic clock, which a wall-clock step
  during the probe cannot make negative).

The error of one estimate is at most ``rtt / 2`` (the answer was read somewhere inside the
round trip), so, like NTP, the estimate kept per peer is the one with the smallest round
trip among the last :data:`WINDOW` samples: a probe delayed by a busy peer or a queue does
not replace a tight one.

Why it matters: applications stamp things with the wall clock of the node that wrote them
(expiry times, tombstone grace periods, last-writer-wins versions for those that use them);
a node whose clock is ahead by ``d`` makes its entries expire ``d`` early for the others.
Past half ``PeerRingConfig.max_clock_offset`` a warning is logged (once a minute per peer)
so that an operator fixes NTP before the bound is reached. Nothing is refused.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from peer_ring.core._clock import Clock

logger = logging.getLogger(__name__)

#: Samples kept per peer; the one with the smallest round trip is the estimate.
WINDOW = 8
#: Seconds (monotonic) between two warnings about the same peer.
WARN_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class OffsetSample:
    """One probe's estimate: ``offset`` of the peer's clock, over a round trip ``rtt``."""

    offset: float
    rtt: float


class ClockOffsets:
    """Per-peer clock-offset estimates, and the warning past half the bound.

    Args:
        clock: this node's clock (the monotonic time rate-limits the warnings).
        bound: ``PeerRingConfig.max_clock_offset`` (seconds).
    """

    def __init__(self, clock: Clock, bound: float) -> None:
        self._clock = clock
        self.bound = bound
        self._samples: dict[str, deque[OffsetSample]] = {}
        #: Monotonic time of each peer's last sample (the estimate's freshness).
        self._last: dict[str, float] = {}
        self._warned: dict[str, float] = {}
        self.warnings = 0

    def record(self, peer: str, t0: float, t1: float, remote: float, rtt: float) -> None:
        """A probe of ``peer`` sent at wall time ``t0``, answered at ``t1`` with ``remote``.

        A sample whose wall clock went backwards during the probe (a step) is ignored.
        """
        if t1 < t0 or rtt < 0:
            return
        samples = self._samples.setdefault(peer, deque(maxlen=WINDOW))
        samples.append(OffsetSample(remote - (t0 + t1) / 2, rtt))
        self._last[peer] = self._clock.monotonic()
        self._maybe_warn(peer)

    def estimate(self, peer: str) -> OffsetSample | None:
        """The estimate for ``peer``: the recent sample with the smallest round trip."""
        samples = self._samples.get(peer)
        if not samples:
            return None
        return min(samples, key=lambda s: s.rtt)

    def forget(self, peer: str) -> None:
        """``peer`` departed: drop its estimate."""
        self._samples.pop(peer, None)
        self._last.pop(peer, None)
        self._warned.pop(peer, None)

    def _maybe_warn(self, peer: str) -> None:
        best = self.estimate(peer)
        if best is None or abs(best.offset) <= self.bound / 2:
            return
        now = self._clock.monotonic()
        last = self._warned.get(peer)
        if last is not None and now - last < WARN_EVERY:
            return
        self._warned[peer] = now
        self.warnings += 1
        logger.warning(
            "clock of peer %s is %+.3f s off this node's (round trip %.3f s): more than half "
            "the max_clock_offset bound of %.3f s; versions and expiries written by the two "
            "nodes may misorder (check NTP)",
            peer,
            best.offset,
            best.rtt,
            self.bound,
        )

    def status(self) -> dict[str, Any]:
        """``sync_status()["clock"]``: per peer offset, round trip and age (JSON-friendly).

        ``age`` is the time since the peer's last sample (seconds, monotonic).
        """
        now = self._clock.monotonic()
        offsets: dict[str, float] = {}
        rtts: dict[str, float] = {}
        ages: dict[str, float] = {}
        for peer in sorted(self._samples):
            best = self.estimate(peer)
            if best is not None:
                offsets[peer] = best.offset
                rtts[peer] = best.rtt
                ages[peer] = now - self._last[peer]
        return {
            "offsets": offsets,
            "rtt": rtts,
            "age": ages,
            "max_abs_offset": max((abs(o) for o in offsets.values()), default=None),
            "bound": self.bound,
            "warnings": self.warnings,
        }
