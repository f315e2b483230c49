"""A small log-bucketed latency histogram that processes can merge.

Each worker records raw latencies (a ``list`` append is the cheapest thing to do on the hot
path) and converts them to this histogram once the measurement is over. Buckets grow by 1%,
so a percentile read from merged histograms is within ~1% of the exact value -- good enough
to compare systems whose p99 differ by far more, and small enough to ship as JSON (a few
hundred buckets).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

#: Each bucket's upper bound is ``_GROWTH`` times its lower bound.
_GROWTH = 1.01
_LOG_GROWTH = math.log(_GROWTH)


def bucket_of(latency_ns: int) -> int:
    """The index of the bucket holding ``latency_ns`` (values <= 1 ns share bucket 0)."""
    if latency_ns <= 1:
        return 0
    return int(math.log(latency_ns) / _LOG_GROWTH)


def bucket_value(index: int) -> float:
    """A representative latency (ns) of bucket ``index``: its geometric middle."""
    return float(_GROWTH ** (index + 0.5))


class Histogram:
    """Counts of latencies per 1% bucket; mergeable and JSON-serializable."""

    __slots__ = ("counts", "total")

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})
        self.total = sum(self.counts.values())

    @classmethod
    def from_ns(cls, latencies_ns: Iterable[int]) -> Histogram:
        """Build a histogram from raw latencies in nanoseconds."""
        counts: dict[int, int] = {}
        log = math.log
        inv = 1.0 / _LOG_GROWTH
        for value in latencies_ns:
            index = int(log(value) * inv) if value > 1 else 0
            counts[index] = counts.get(index, 0) + 1
        return cls(counts)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts to this histogram."""
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.total += other.total

    def percentile(self, fraction: float) -> float:
        """The latency (ns) below which ``fraction`` (0..1) of the samples fall; 0 if empty."""
        if not self.total:
            return 0.0
        rank = max(1, math.ceil(fraction * self.total))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return bucket_value(index)
        return bucket_value(max(self.counts))

    def to_json(self) -> dict[str, int]:
        """JSON form: ``{bucket index as str: count}``."""
        return {str(index): count for index, count in sorted(self.counts.items())}

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> Histogram:
        """Inverse of :meth:`to_json`."""
        return cls({int(index): int(count) for index, count in data.items()})

    def summary_ms(self) -> dict[str, float]:
        """p50, p99 and p99.9 in milliseconds."""
        return {
            "p50_ms": self.percentile(0.50) / 1e6,
            "p99_ms": self.percentile(0.99) / 1e6,
            "p999_ms": self.percentile(0.999) / 1e6,
        }
