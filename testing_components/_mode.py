"""``PEER_RING_COMPONENTS``: where test components come from (binary, container or either)."""

from __future__ import annotations

import os
from typing import Literal

COMPONENTS_ENV = "PEER_RING_COMPONENTS"
ComponentsMode = Literal["auto", "binary", "container"]
_MODES: tuple[ComponentsMode, ...] = ("auto", "binary", "container")


def components_mode() -> ComponentsMode:
    """The mode chosen by ``PEER_RING_COMPONENTS`` (default ``auto``).

    Raises:
        ValueError: the variable holds something else than ``auto``, ``binary`` or
            ``container`` (a typo must not silently fall back to another path).
    """
    value = os.environ.get(COMPONENTS_ENV, "").strip().lower() or "auto"
    for mode in _MODES:
        if value == mode:
            return mode
    raise ValueError(f"{COMPONENTS_ENV}={value!r}: expected one of {', '.join(_MODES)}")
