"""Rate-limited warnings, for events a remote party can trigger at will (refused calls).

A client that reconnects in a loop with a wrong token would otherwise write a warning per
attempt: thousands of lines per second, drowning the node's useful logs and its disk.
Every event is still counted by the caller (``TransportStats``); only the log lines are
thinned out, and the next line says how many similar events it stands for.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

from peer_ring.core._clock import Clock


class RateLimitedLog:
    """At most one WARNING per ``interval`` seconds for each kind of event.

    Args:
        logger: where the lines go.
        clock: time source (a fake clock makes the thinning deterministic in tests).
        interval: seconds between two lines of the same kind.
    """

    def __init__(
        self, logger: logging.Logger, clock: Clock, interval: float, max_kinds: int = 256
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._interval = interval
        self._max_kinds = max_kinds
        # kind -> (time of the last line, events suppressed since). Callers choose kinds
        # from a small fixed set (never a remote address); max_kinds bounds it regardless.
        self._state: dict[Hashable, tuple[float, int]] = {}

    def warning(
        self, kind: Hashable, message: str, *args: object, exc_info: BaseException | None = None
    ) -> bool:
        """Log ``message % args`` unless a line of this ``kind`` was logged recently.

        Args:
            kind: what the event is, for the thinning (e.g. ``("Exchange", "wrong")``).
            message: ``%``-style format, as for :meth:`logging.Logger.warning`.
            args: its arguments.
            exc_info: an exception whose traceback goes with the line.

        Returns:
            True when the line was written.
        """
        now = self._clock.monotonic()
        last = self._state.get(kind)
        if last is not None and now - last[0] < self._interval:
            self._state[kind] = (last[0], last[1] + 1)
            return False
        suppressed = last[1] if last is not None else 0
        if suppressed:
            message += " (%d similar event(s) since the previous such line were not logged)"
            args = (*args, suppressed)
        self._logger.warning(message, *args, exc_info=exc_info)
        if last is None and len(self._state) >= self._max_kinds:
            self._state.clear()  # forget old kinds rather than grow without bound
        self._state[kind] = (now, 0)
        return True
