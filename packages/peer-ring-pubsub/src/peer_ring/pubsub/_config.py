"""Topic options: validated once, carried with the partition's state to every replica."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from peer_ring.pubsub._codec import Reader, Writer
from peer_ring.pubsub._errors import InvalidOptionError

#: Defaults of a topic's options (see the README's "Defaults" table).
DEFAULT_PARTITIONS = 8
DEFAULT_MAX_MESSAGES = 100_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_DEDUP_WINDOW = 120.0
MAX_PARTITIONS = 4096
_ENCODED_SIZE = 56  # seven 8-byte fields


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """A topic's options; retention applies per partition.

    Attributes:
        partitions: number of partitions (order is kept within a partition).
        max_messages: retention: keep at most this many messages per partition.
        max_bytes: retention: keep at most this many payload bytes per partition.
        max_age: retention: drop messages older than this many seconds (None: no limit).
        max_message_bytes: a larger message is refused with ``PayloadTooLargeError``.
        dedup_window: seconds a ``msg_id`` is remembered for idempotent publish.
        durable: False makes a non-durable topic: each partition lives on its sequencer
            only (no replicas, no data movement); a sequencer change starts an empty log
            with a new epoch, and what the old one held is gone.
    """

    partitions: int = DEFAULT_PARTITIONS
    max_messages: int = DEFAULT_MAX_MESSAGES
    max_bytes: int = DEFAULT_MAX_BYTES
    max_age: float | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    dedup_window: float = DEFAULT_DEDUP_WINDOW
    durable: bool = True

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TopicConfig:
        """Build a config from keyword options, with a typed error for bad ones.

        Raises:
            InvalidOptionError: an unknown option name or an out-of-range value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidOptionError(
                f"unknown topic option(s) {unknown}; known options are {sorted(known)}"
            )
        config = cls(**options)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise :class:`InvalidOptionError` unless every value is in range."""
        _int_in("partitions", self.partitions, 1, MAX_PARTITIONS)
        _int_in("max_messages", self.max_messages, 1, 2**62)
        _int_in("max_bytes", self.max_bytes, 1, 2**62)
        _int_in("max_message_bytes", self.max_message_bytes, 1, 2**31)
        if self.max_age is not None:
            _positive("max_age", self.max_age)
        _positive("dedup_window", self.dedup_window)
        if not isinstance(self.durable, bool):
            raise InvalidOptionError(f"durable must be True or False, not {self.durable!r}")

    def encode(self, w: Writer) -> None:
        """Append this config to ``w`` (every request carries one: the few distinct
        encodings are cached)."""
        raw = _ENCODED.get(self)
        if raw is None:
            enc = Writer().u64(self.partitions).u64(self.max_messages).u64(self.max_bytes)
            enc.f64(-1.0 if self.max_age is None else self.max_age)
            enc.u64(self.max_message_bytes).f64(self.dedup_window).u64(int(self.durable))
            raw = enc.getvalue()
            if len(_ENCODED) < 1024:
                _ENCODED[self] = raw
        w.raw(raw)

    @classmethod
    def decode(cls, r: Reader) -> TopicConfig:
        """Read a config written by :meth:`encode` (every request carries one: the few
        distinct encodings are cached)."""
        raw = r.peek(_ENCODED_SIZE)
        known = _DECODED.get(raw)
        if known is not None:
            r.skip(_ENCODED_SIZE)
            return known
        config = cls._decode(r)
        if len(_DECODED) < 1024:
            _DECODED[raw] = config
        return config

    @classmethod
    def _decode(cls, r: Reader) -> TopicConfig:
        partitions, max_messages, max_bytes = r.u64(), r.u64(), r.u64()
        age = r.f64()
        config = cls(
            partitions=partitions,
            max_messages=max_messages,
            max_bytes=max_bytes,
            max_age=None if age < 0 else age,
            max_message_bytes=r.u64(),
            dedup_window=r.f64(),
            durable=bool(r.u64()),
        )
        config.validate()
        return config


_DECODED: dict[bytes, TopicConfig] = {}
_ENCODED: dict[TopicConfig, bytes] = {}


def _int_in(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidOptionError(f"{name} must be an integer in [{low}, {high}], not {value!r}")


def _positive(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidOptionError(f"{name} must be a positive number of seconds, not {value!r}")
