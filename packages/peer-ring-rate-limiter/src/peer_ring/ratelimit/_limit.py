"""The :class:`Limit` a key is checked against and the :class:`Algorithm` that enforces it."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from peer_ring.ratelimit._errors import InvalidLimitError, UnknownAlgorithmError

#: Largest number of hits per period a limit may have (keeps state records small and the
#: float arithmetic of the algorithms exact on integers).
MAX_LIMIT = 1 << 40
#: Largest limit the sliding-window *log* accepts: its state stores one entry per admitted
#: hit, and that record is replicated on every decision.
MAX_LOG_LIMIT = 10_000


class Algorithm(enum.Enum):
    """How a limit is enforced. The value is the wire id stored in state records."""

    TOKEN_BUCKET = 1
    LEAKY_BUCKET = 2
    GCRA = 3
    FIXED_WINDOW = 4
    SLIDING_WINDOW_LOG = 5
    SLIDING_WINDOW_COUNTER = 6

    @classmethod
    def parse(cls, value: Algorithm | str | int) -> Algorithm:
        """Return the algorithm named by ``value`` (member, name like ``"gcra"``, or id).

        Raises:
            UnknownAlgorithmError: for any other value.
        """
        if isinstance(value, Algorithm):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper().replace("-", "_")]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(a.name.lower() for a in cls)
        raise UnknownAlgorithmError(f"unknown algorithm {value!r} (known: {names})")


@dataclass(frozen=True, slots=True)
class Limit:
    """``limit`` hits per ``period`` seconds, enforced by ``algorithm``.

    ``burst`` is the bucket capacity of the bucket algorithms (token bucket, leaky bucket,
    GCRA): how many hits may arrive at once after a quiet time. It defaults to ``limit`` and
    is ignored by the window algorithms. ``name`` labels metrics (default: the shape, e.g.
    ``"100/60s"``); it is not part of the key.

    Raises:
        InvalidLimitError: a limit or burst below 1 or above :data:`MAX_LIMIT`, a period
            that is not a finite positive number.
        UnknownAlgorithmError: an unknown algorithm.
    """

    limit: int
    period: float
    burst: int | None = None
    algorithm: Algorithm = Algorithm.TOKEN_BUCKET
    name: str | None = None
    # Computed once (read on every decision for the metrics): not an argument, not compared.
    _label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_count("limit", self.limit)
        if isinstance(self.period, bool) or not isinstance(self.period, int | float):
            raise InvalidLimitError(f"period must be a number of seconds, got {self.period!r}")
        if not math.isfinite(self.period) or self.period <= 0:
            raise InvalidLimitError(
                f"period must be a positive number of seconds, got {self.period!r}"
            )
        if self.burst is not None:
            _check_count("burst", self.burst)
        object.__setattr__(self, "period", float(self.period))
        object.__setattr__(self, "algorithm", Algorithm.parse(self.algorithm))
        if self.algorithm is Algorithm.SLIDING_WINDOW_LOG and self.limit > MAX_LOG_LIMIT:
            raise InvalidLimitError(
                f"the sliding window log keeps one entry per hit: limit {self.limit} is above "
                f"{MAX_LOG_LIMIT}; use sliding_window_counter for large limits"
            )
        object.__setattr__(self, "_label", self.name or f"{self.limit}/{self.period:g}s")

    @property
    def capacity(self) -> int:
        """The bucket capacity: ``burst`` if given, else ``limit``."""
        return self.limit if self.burst is None else self.burst

    @property
    def rate(self) -> float:
        """Hits per second in the long run (``limit / period``)."""
        return self.limit / self.period

    @property
    def label(self) -> str:
        """The metrics label: ``name``, or the shape such as ``"100/60s"``."""
        return self._label

    @classmethod
    def per_second(
        cls,
        limit: int,
        *,
        burst: int | None = None,
        algorithm: Algorithm | str = Algorithm.TOKEN_BUCKET,
        name: str | None = None,
    ) -> Limit:
        """``limit`` hits per second (``Limit.per_second(100, burst=20)``)."""
        return cls(limit, 1.0, burst, Algorithm.parse(algorithm), name)

    @classmethod
    def per_minute(
        cls,
        limit: int,
        *,
        burst: int | None = None,
        algorithm: Algorithm | str = Algorithm.TOKEN_BUCKET,
        name: str | None = None,
    ) -> Limit:
        """``limit`` hits per minute."""
        return cls(limit, 60.0, burst, Algorithm.parse(algorithm), name)

    @classmethod
    def per_hour(
        cls,
        limit: int,
        *,
        burst: int | None = None,
        algorithm: Algorithm | str = Algorithm.TOKEN_BUCKET,
        name: str | None = None,
    ) -> Limit:
        """``limit`` hits per hour."""
        return cls(limit, 3600.0, burst, Algorithm.parse(algorithm), name)

    @classmethod
    def per_day(
        cls,
        limit: int,
        *,
        burst: int | None = None,
        algorithm: Algorithm | str = Algorithm.TOKEN_BUCKET,
        name: str | None = None,
    ) -> Limit:
        """``limit`` hits per day."""
        return cls(limit, 86400.0, burst, Algorithm.parse(algorithm), name)


def _check_count(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidLimitError(f"{what} must be an integer, got {value!r}")
    if value < 1 or value > MAX_LIMIT:
        raise InvalidLimitError(f"{what} must be between 1 and {MAX_LIMIT}, got {value}")
