"""Running an asyncio program on the fastest available event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from peer_ring.core._errors import InvalidArgumentError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Set by ``run(gc_freeze_after_start=True)`` for the duration of the run: every
#: :meth:`PeerRing.start` then collects once and freezes what exists (see run()).
_freeze_after_start = False


def freeze_gc_if_requested() -> None:
    """Called by ``PeerRing.start`` once started: collect and ``gc.freeze()`` when asked."""
    if _freeze_after_start:
        gc.collect()
        gc.freeze()
        logger.debug("gc frozen after start: %d objects", gc.get_freeze_count())


def uvloop_available() -> bool:
    """True when the optional ``uvloop`` extra is installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(
    main: Coroutine[Any, Any, T],
    *,
    use_uvloop: bool | None = None,
    gc_threshold: int | None = None,
    gc_freeze_after_start: bool = False,
) -> T:
    """Run ``main`` like :func:`asyncio.run`, on uvloop when it is installed.

    The two garbage-collector settings are the host program's tuning, off by default (the
    library never changes the collector on its own); both are undone when ``run`` returns.
    Under load, a node's operations in flight keep enough objects alive to trigger young
    collections often, and each full collection walks every object the program imported
    (20-23 ms measured with 64 operations in flight: the longest event-loop stalls a node
    caused its host; docs/benchmarks.md, "Issue 23, round 3").

    Args:
        main: the coroutine to run.
        use_uvloop: force (True) or forbid (False) uvloop; ``None`` uses it when installed
            (``pip install 'peer-ring-core[uvloop]'``).
        gc_threshold: the young generation's threshold (``gc.set_threshold(n, ...)``, the
            other two kept) while ``main`` runs; ``None`` keeps Python's (700). 10,000-50,000
            makes young collections rare at a few thousand operations per second.
        gc_freeze_after_start: once each :class:`PeerRing` has started, collect once and
            ``gc.freeze()`` every object alive then (imported modules, the ring), so later
            full collections no longer walk them. Memory frozen stays allocated until the
            run ends.

    Raises:
        InvalidArgumentError: ``gc_threshold`` is not an integer >= 1.
    """
    global _freeze_after_start
    if gc_threshold is not None and (
        not isinstance(gc_threshold, int) or isinstance(gc_threshold, bool) or gc_threshold < 1
    ):
        raise InvalidArgumentError(f"gc_threshold must be an integer >= 1, got {gc_threshold!r}")
    previous = gc.get_threshold()
    if gc_threshold is not None:
        gc.set_threshold(gc_threshold, previous[1], previous[2])
    _freeze_after_start = gc_freeze_after_start
    try:
        want = uvloop_available() if use_uvloop is None else use_uvloop
        if want:
            import uvloop

            logger.debug("running on uvloop")
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
        return asyncio.run(main)
    finally:
        _freeze_after_start = False
        if gc_freeze_after_start:
            gc.unfreeze()
        if gc_threshold is not None:
            gc.set_threshold(*previous)
