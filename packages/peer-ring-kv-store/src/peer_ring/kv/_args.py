"""Argument checks at the store's API boundary.

Every bad argument raises an :class:`~peer_ring.core.InvalidArgumentError` subclass here,
before anything reaches the node or the wire, so that a caller (and ``serve``, which answers
them 400) gets one clear message instead of an error from a lower layer.
"""

from __future__ import annotations

import logging
import math

from peer_ring.core import InvalidArgumentError, PeerRing
from peer_ring.kv._codec import Codec, encode_value
from peer_ring.kv._errors import (
    ClusterTooSmallError,
    InvalidKeyError,
    InvalidValueError,
    KeyTooLargeError,
)

logger = logging.getLogger(__name__)

#: Longest accepted key, in bytes (UTF-8 for ``str`` keys).
MAX_KEY_BYTES = 64 * 1024


def key_bytes(key: object) -> bytes:
    """The key as bytes: ``str`` (UTF-8) or ``bytes``, 1 byte to :data:`MAX_KEY_BYTES`.

    Raises:
        InvalidKeyError: not ``str``/``bytes``, empty, or not encodable as UTF-8.
        KeyTooLargeError: longer than :data:`MAX_KEY_BYTES`.
    """
    if isinstance(key, str):
        try:
            key_b = key.encode()
        except UnicodeEncodeError as exc:
            raise InvalidKeyError(f"the key is not valid UTF-8: {exc}") from None
    elif isinstance(key, bytes):
        key_b = key
    else:
        raise InvalidKeyError(f"keys are str or bytes, not {type(key).__name__}")
    if not key_b:
        raise InvalidKeyError("keys must not be empty")
    if len(key_b) > MAX_KEY_BYTES:
        raise KeyTooLargeError(f"key of {len(key_b)} bytes exceeds {MAX_KEY_BYTES}")
    return key_b


def seconds(name: str, value: object) -> float:
    """A finite, positive number of seconds (``bool`` is refused, not read as 0 or 1).

    Raises:
        InvalidArgumentError: anything else.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidArgumentError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def count(name: str, value: object) -> int | None:
    """``None`` or an ``int`` >= 1 (``bool`` refused)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_sizes(node: PeerRing, replication: object, quorum: object) -> None:
    """Refuse a per-call ``replication``/``quorum`` the cluster cannot satisfy.

    A ``replication`` above the ring's size alone is legal (the key gets one copy per
    member); together with a ``quorum`` above the ring's size the call could never succeed,
    which is a bad argument, not an outage.

    Raises:
        InvalidArgumentError: not integers >= 1, or ``quorum > replication``.
        ClusterTooSmallError: explicit ``replication`` and its quorum exceed the members.
    """
    n = count("replication", replication)
    q = count("quorum", quorum)
    if n is None:
        if q is not None and q > node.config.replication:
            raise InvalidArgumentError(
                f"quorum ({q}) cannot be greater than replication ({node.config.replication})"
            )
        return
    if q is not None and q > n:
        raise InvalidArgumentError(f"quorum ({q}) cannot be greater than replication ({n})")
    members = len(node.members)
    if n > members:
        need = node.config.quorum_for(n) if q is None else q
        if need > members:
            raise ClusterTooSmallError(
                f"replication={n} (quorum {need}) is larger than the cluster: the ring has "
                f"{members} member(s); use replication <= {members}"
            )


def encode(value: object, codec: Codec) -> tuple[bytes, bool]:
    """:func:`encode_value` with a typed error for values the codec refuses.

    Raises:
        InvalidValueError: the codec cannot encode ``value``.
    """
    try:
        return encode_value(value, codec)
    except InvalidArgumentError:
        raise
    except Exception as exc:  # TypeError, ValueError, PicklingError, a custom codec's own
        raise InvalidValueError(
            f"{type(codec).__name__} cannot encode a {type(value).__name__} value: {exc}"
        ) from exc
