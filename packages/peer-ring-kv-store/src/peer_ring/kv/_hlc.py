"""A hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks", 2014).

An HLC timestamp stays close to wall-clock time (so last-writer-wins picks the write that
happened last in real time whenever clocks are roughly in sync), yet never goes backwards
and always moves past every timestamp the node has observed (so a write made after reading
a value gets a higher version than that value, even if this node's clock is behind the
writer's).

Drift guard: a remote timestamp more than ``max_drift`` seconds ahead of the local clock is
*not* adopted by :meth:`HLC.update`. One peer with a badly wrong clock (say a year ahead)
would otherwise drag every node's clock with it for good: all later versions would carry
its bogus time and its logical counter. The price of refusing: a local write made after
seeing such a version may get a *lower* version than it, so that far-future write keeps
winning LWW until real time catches up. Each refusal is counted in
:attr:`HLC.drift_rejections` and logged (at most once per 10 s of monotonic time).
"""

from __future__ import annotations

import logging

from peer_ring.core import Clock
from peer_ring.kv._versions import MAX_LOGICAL, MAX_NODE_ID_BYTES, Version

logger = logging.getLogger(__name__)

#: Default for ``max_drift``: far above NTP-level skew (milliseconds), far below a broken clock.
DEFAULT_MAX_DRIFT = 60.0

_WARN_EVERY = 10.0
# Versions are built without NamedTuple's Python-level __new__: now() is on every write.
_new = tuple.__new__


class HLC:
    """One node's hybrid logical clock.

    Args:
        clock: the source of wall-clock time (``clock.time()``, seconds).
        node_id: this node's identity; it is the tie-breaker of every version issued here.
        max_drift: seconds a remote timestamp may be ahead of the local clock and still be
            adopted by :meth:`update` (see the module docs).

    Raises:
        ValueError: ``node_id`` is empty or longer than 255 UTF-8 bytes, or ``max_drift`` < 0.
    """

    __slots__ = (
        "_clock",
        "_last_warning",
        "_logical",
        "_max_drift_us",
        "_node_id",
        "_physical",
        "drift_rejections",
    )

    def __init__(self, clock: Clock, node_id: str, *, max_drift: float = DEFAULT_MAX_DRIFT):
        if not node_id or len(node_id.encode()) > MAX_NODE_ID_BYTES:
            raise ValueError(f"node id must be 1..{MAX_NODE_ID_BYTES} UTF-8 bytes: {node_id!r}")
        if max_drift < 0:
            raise ValueError(f"max_drift must be >= 0, got {max_drift}")
        self._clock = clock
        self._node_id = node_id
        self._max_drift_us = int(max_drift * 1_000_000)
        self._physical = 0
        self._logical = 0
        self._last_warning: float | None = None
        #: How many remote timestamps were refused by the drift guard.
        self.drift_rejections = 0

    @property
    def node_id(self) -> str:
        """The node id stamped on every version this clock issues."""
        return self._node_id

    @property
    def last(self) -> Version:
        """The latest timestamp issued or adopted (does not advance the clock)."""
        return Version(self._physical, self._logical, self._node_id)

    def now(self) -> Version:
        """Issue a timestamp for a local event (a write): strictly greater than any before.

        If the wall clock stalls or steps backwards, the logical counter moves instead.
        """
        wall = int(self._clock.time() * 1_000_000)  # microseconds
        if wall > self._physical:
            self._physical = wall
            self._logical = 0
        else:
            self._bump(self._logical + 1)
        return _new(Version, (self._physical, self._logical, self._node_id))

    def update(self, remote: Version) -> Version:
        """Merge a timestamp received from another node (the HLC receive rule).

        Afterwards every :meth:`now` is greater than ``remote``, unless the drift guard
        refused it (``remote`` more than ``max_drift`` ahead of the local wall clock); a
        refused timestamp leaves the clock as a local event would (see the module docs).

        Returns:
            The timestamp of the receive event.
        """
        wall = int(self._clock.time() * 1_000_000)  # microseconds
        remote_p, remote_l, _ = remote
        if remote_p - wall > self._max_drift_us:
            self._refuse(remote, wall)
            return self.now()
        # Kulkarni et al., Fig. 5: l' = max(l, l_m, pt); c follows whichever l' came from.
        local_p, local_l = self._physical, self._logical
        physical = max(local_p, remote_p, wall)
        if physical == local_p == remote_p:
            logical = max(local_l, remote_l) + 1
        elif physical == local_p:
            logical = local_l + 1
        elif physical == remote_p:
            logical = remote_l + 1
        else:
            logical = 0
        if logical > MAX_LOGICAL:  # _bump(), inlined: a receive on every replicated write
            physical += 1
            logical = 0
        self._physical = physical
        self._logical = logical
        return _new(Version, (physical, logical, self._node_id))

    def observe(self, physical: int, logical: int, node_id: str) -> None:
        """:meth:`update` with a timestamp given as its parts, for a replica's write.

        The same guarantee (afterwards every :meth:`now` is greater than the timestamp,
        unless the drift guard refuses it), at no cost when this clock is already past
        the timestamp: :meth:`now` is strictly greater than every timestamp issued or
        adopted before, so there is nothing to do, and no clock read.
        """
        if physical < self._physical or (physical == self._physical and logical <= self._logical):
            return
        self.update(_new(Version, (physical, logical, node_id)))

    def _bump(self, logical: int) -> None:
        # The logical counter is a u32 on the wire. Rather than overflow, borrow one
        # microsecond from the future: (p + 1, 0) is still greater than (p, anything).
        if logical > MAX_LOGICAL:
            self._physical += 1
            logical = 0
        self._logical = logical

    def _refuse(self, remote: Version, wall: int) -> None:
        self.drift_rejections += 1
        now = self._clock.monotonic()
        if self._last_warning is None or now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            logger.warning(
                "not adopting a timestamp from %s that is %.3f s ahead of the local clock "
                "(max drift %.3f s; %d refused so far): check the clocks of the cluster",
                remote.node_id,
                (remote.physical - wall) / 1_000_000,
                self._max_drift_us / 1_000_000,
                self.drift_rejections,
            )
