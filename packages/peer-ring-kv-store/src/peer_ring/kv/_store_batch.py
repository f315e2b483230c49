"""Multi-key operations of :class:`~peer_ring.kv.KVStore`: ``mget`` and ``mset``.

Each sends one request per replica node with all its keys (``PeerRing.execute_many``); every
key gets its own quorum, read repair and refusal handling, as :meth:`KVStore.get` and
:meth:`KVStore.set` give a single key.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from peer_ring.core import ExecuteResult
from peer_ring.kv._codec import decode_value
from peer_ring.kv._ordered import MAX_ATTEMPTS, WriteRefusedError, newest_refusal, version_above
from peer_ring.kv._record import reconcile
from peer_ring.kv._store_base import KVStoreBase
from peer_ring.kv._store_replica import GET, NAMESPACE, SET
from peer_ring.kv._wire import decode_get_response, encode_record

#: A key type: ``str`` or ``bytes`` (a TypeVar so ``dict[str, ...]`` arguments type-check).
K = TypeVar("K", str, bytes)


class KVBatchMixin(KVStoreBase):
    """``mget``/``mset``; :class:`~peer_ring.kv.KVStore` provides the attributes."""

    async def mget(
        self,
        keys: Iterable[K],
        *,
        quorum: int | None = None,
        replication: int | None = None,
    ) -> dict[K, Any]:
        """Values of several keys in one round trip per replica node.

        Each key gets its own read quorum (and read repair), with the same read forwarding
        as :meth:`get` while partitions move.

        Returns:
            ``{key: value}`` for every key that exists (absent keys are left out).

        Raises:
            InvalidArgumentError: a bad key, quorum or replication.
            QuorumNotReachedError: some key got fewer than ``quorum`` answers (the first
                such key's error).
        """
        self._check_running()
        key_list = list(dict.fromkeys(keys))
        keys_b = [self._key(k) for k in key_list]
        self._check_sizes(replication, quorum)
        results = await self._node.execute_many(
            NAMESPACE,
            GET,
            [(k, b"") for k in keys_b],
            replication=replication,
            quorum=quorum,
        )
        _raise_first_error(results)
        out: dict[K, Any] = {}
        now = self._clock.time()
        for key, key_b, result in zip(key_list, keys_b, results, strict=True):
            records = [decode_get_response(p) for p in result.payloads]
            winner = reconcile(key_b, records, self._resolver)
            if winner is None:
                continue
            result.on_complete(functools.partial(self._repair, key_b, winner, None))
            if winner.is_live(now):
                out[key] = decode_value(winner.value, winner.encoded, self._codec)
        return out

    async def mset(
        self,
        mapping: Mapping[K, object],
        *,
        ttl: float | None = None,
        quorum: int | None = None,
        replication: int | None = None,
    ) -> None:
        """Store several values in one round trip per replica node.

        Each key gets its own write quorum, with sloppy quorum and hinted handoff as for
        :meth:`set` (a replica that is down is replaced by a substitute holding a hint).

        Raises:
            InvalidArgumentError: a bad key, ttl, quorum or replication.
            ValueTooLargeError: an encoded value exceeds ``max_value_bytes`` (nothing is
                written then).
            QuorumNotReachedError: some key got fewer than ``quorum`` acknowledgements
                (the first such key's error; the other keys may be written).
        """
        self._check_running()
        pending = [(self._key(k), self._record(v, ttl)) for k, v in mapping.items()]
        self._check_sizes(replication, quorum)
        for _ in range(MAX_ATTEMPTS):
            results = await self._node.execute_many(
                NAMESPACE,
                SET,
                [(k, encode_record(r)) for k, r in pending],
                replication=replication,
                quorum=quorum,
            )
            _raise_first_error(results)
            # Keys refused by a replica holding a newer version go again above it (_write).
            retry = []
            for (key_b, record), result in zip(pending, results, strict=True):
                newer = newest_refusal(result.payloads)
                if newer is not None:
                    retry.append((key_b, record._replace(version=version_above(self._hlc, newer))))
            if not retry:
                return
            self.reversioned_writes += len(retry)
            pending = retry
        key_b, _ = pending[0]
        raise WriteRefusedError(key_b, 0, [])


def _raise_first_error(results: Sequence[ExecuteResult]) -> None:
    for result in results:
        if result.error is not None:
            raise result.error
