"""Running an asyncio program on the fastest available event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


def uvloop_available() -> bool:
    """True when the optional ``uvloop`` extra is installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool | None = None) -> T:
    """Run ``main`` like :func:`asyncio.run`, on uvloop when it is installed.

    Args:
        main: the coroutine to run.
        use_uvloop: force (True) or forbid (False) uvloop; ``None`` uses it when installed
            (``pip install 'peer-ring-core[uvloop]'``).
    """
    want = uvloop_available() if use_uvloop is None else use_uvloop
    if want:
        import uvloop

        logger.debug("running on uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
