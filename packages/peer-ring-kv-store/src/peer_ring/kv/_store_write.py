"""The write path of :class:`~peer_ring.kv.KVStore`: a write's record, its bytes, its quorum.

``set()`` encodes its record straight into the bytes replicas store (:meth:`_payload`,
byte for byte ``encode_record`` of the record :meth:`_record` builds), and
:meth:`_write` sends them to the key's replicas and counts the acknowledgements: a write is
acknowledged once a quorum stored this version, and goes again above a newer version a
replica refused it with (:mod:`peer_ring.kv._ordered`). :class:`KVStore` inherits these
methods.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Collection

from peer_ring.core import ExecuteResult, QuorumNotReachedError
from peer_ring.kv._args import encode, seconds
from peer_ring.kv._errors import ValueTooLargeError
from peer_ring.kv._ordered import MAX_ATTEMPTS, WriteRefusedError, newest_refusal, version_above
from peer_ring.kv._record import Record
from peer_ring.kv._store_base import KVStoreBase
from peer_ring.kv._store_replica import NAMESPACE, SET
from peer_ring.kv._wire import FLAG_ENCODED, RECORD_HEAD, decode_record, encode_record

# Records built without NamedTuple's Python-level __new__ (on every write).
_new = tuple.__new__
_pack_record_head = RECORD_HEAD.pack
#: Largest value length the wire format carries (u32).
MAX_WIRE_VALUE = 0xFFFF_FFFF
_INF = math.inf


class KVWriteMixin(KVStoreBase):
    """The write path; :class:`~peer_ring.kv.KVStore` provides the attributes."""

    _max_value_bytes: int
    _sloppy_quorum: bool
    # This node's id as the wire carries it (UTF-8), stamped on every record it writes.
    _writer: bytes
    # The largest value _payload encodes itself: max_value_bytes, at most MAX_WIRE_VALUE.
    _max_fast_value: int

    def _record(self, value: object, ttl: float | None) -> Record:
        if type(value) is bytes:  # raw bytes pass through (encode_value)
            data, encoded = value, False
        else:
            data, encoded = encode(value, self._codec)
        if len(data) > self._max_value_bytes:
            raise ValueTooLargeError(len(data), self._max_value_bytes)
        expires = 0.0 if ttl is None else self._clock.time() + seconds("ttl", ttl)
        return _new(Record, (data, self._hlc.now(), expires, False, encoded))

    def _payload(self, value: object, ttl: float | None) -> bytes:
        """``encode_record(self._record(value, ttl))``, without the record: the bytes of
        set()'s write. A value or expiry encode_record would refuse takes that path."""
        if type(value) is bytes:  # raw bytes pass through (encode_value)
            data, flags = value, 0
        else:
            data, encoded = encode(value, self._codec)
            flags = FLAG_ENCODED if encoded else 0
        size = len(data)
        if size > self._max_fast_value:
            if size > self._max_value_bytes:
                raise ValueTooLargeError(size, self._max_value_bytes)
            return encode_record(self._record(value, ttl))  # raises its ValueError
        expires = 0.0 if ttl is None else self._clock.time() + seconds("ttl", ttl)
        physical, logical, _ = self._hlc.now()
        writer = self._writer
        if 0.0 <= expires < _INF:
            try:
                head = _pack_record_head(flags, physical, logical, expires, len(writer), size)
                return b"".join((head, writer, data))
            except struct.error:
                pass
        return encode_record(self._record(value, ttl))  # raises its ValueError

    async def _write(
        self,
        key: bytes,
        payload: bytes,
        replication: int | None,
        quorum: int | None,
        first: ExecuteResult | None = None,
    ) -> None:
        """Write the encoded record ``payload`` (see below); ``first``: the result of its
        first attempt when the caller already sent it (``set()`` does, and returns itself
        in the common case: a quorum of the key's replicas stored it)."""
        # Acknowledged only once a quorum stored this version: a replica holding a higher
        # one refuses, and the write goes again above it, so a write acknowledged after
        # another one wins whatever the clock skew (_ordered, docs/consistency.md).
        # Hints a substitute stores for a missing replica are sent and delivered later as
        # usual, but only replicas of the key count for the acknowledgement: a substitute
        # cannot refuse an older version, so counting it would break the intersection.
        node = self._node
        config = self._config
        n = config.replication if replication is None else replication
        q = config.quorum_for(n) if quorum is None else quorum
        for _ in range(MAX_ATTEMPTS):
            if first is None:
                result = await node.execute(
                    NAMESPACE, SET, key, payload, replication=replication, quorum=quorum
                )
            else:
                result, first = first, None
            if not self._sloppy_quorum:
                # The common outcome, in one pass: a quorum of the key's replicas
                # acknowledged (empty payloads) and none refused (see below).
                prefs = result.preference_list
                acks = 0
                for reply in result.replies:
                    if reply.error is None:
                        if reply.payload:
                            acks = -n  # a refusal, or bytes to look at: the general path
                            break
                        if reply.node in prefs:
                            acks += 1
                if acks >= q:
                    return
            replies = result.ok_replies
            home: Collection[str] = (
                {r.node for r in replies} if self._sloppy_quorum else result.preference_list
            )
            if sum(1 for r in replies if r.node in home) < q and not result.complete:
                replies = [r for r in await result.all_replies() if r.error is None]
            newer = newest_refusal(r.payload for r in replies)
            if newer is None:
                acked = [r.node for r in replies if r.node in home]
                if len(acked) >= q:
                    return
                failures = {r.node: r.error for r in result.replies if r.error is not None}
                raise QuorumNotReachedError(NAMESPACE, SET.name, q, acked, failures)
            self.reversioned_writes += 1
            record = decode_record(payload)
            payload = encode_record(record._replace(version=version_above(self._hlc, newer)))
        raise WriteRefusedError(key, len(result.ok_replies), [r.node for r in result.ok_replies])
