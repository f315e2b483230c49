"""The hash specification (see ``docs/hash-spec.md``).

Key -> partition is ``fingerprint64(key) mod P`` with farmhash *Fingerprint64*, which is
stable across platforms, CPUs and library versions. Never use farmhash ``hash64`` /
``hash32``: their output may change with the CPU's instruction set.

Keys are bytes; ``str`` keys are encoded as UTF-8 first.
"""

from __future__ import annotations

import farmhash

from peer_ring.core._hooks import DIGEST_BUCKETS


def fingerprint64(data: bytes | str) -> int:
    """farmhash Fingerprint64 of ``data`` (UTF-8 for ``str``), an unsigned 64-bit int."""
    return int(farmhash.fingerprint64(data))


def partition_for_key(key: bytes | str, partitions: int) -> int:
    """The partition that owns ``key``: ``fingerprint64(key) % partitions``."""
    return int(farmhash.fingerprint64(key)) % partitions


def bucket_for_key(key: bytes | str) -> int:
    """The anti-entropy digest bucket of ``key`` inside its partition.

    Uses the high 32 bits so that it is independent of the partition (low bits).
    """
    return (int(farmhash.fingerprint64(key)) >> 32) % DIGEST_BUCKETS
