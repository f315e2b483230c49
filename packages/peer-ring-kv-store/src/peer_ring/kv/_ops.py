"""Operations beyond get/set/delete: exists, ttl, expire, set-if-absent, compare-and-set,
incr/decr, mdelete and scan (a mixin of :class:`~peer_ring.kv.KVStore`).

Read-modify-write operations (set-if-absent, compare-and-set, incr/decr, expire) are
executed by the key's **primary**: the first member of its preference list that answers.
The caller sends the operation there (``PeerRing.call``, one round trip); the primary
serializes the operations of each key with a lock, reads the current record with the
read quorum (R + W > N, so it sees every acknowledged write, whoever coordinated it),
computes the new record with a version above the one it read, and writes it with the write
quorum before answering. Two concurrent ``incr`` of one key through any nodes therefore
both land: the second one reads the first one's result.

Not linearizable across a primary change: while the ring disagrees about who is primary
(a node just joined, or is down but not yet declared down), two nodes may serialize the
same key at once, and one of two concurrent updates can be lost (last writer wins). The
call is sent to the next replica only when the primary refused the connection
(``PeerUnavailableError``: nothing was applied); a timeout is raised, not retried, since
the operation may have been applied.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, cast, overload

from peer_ring.core import (
    Command,
    CommandContext,
    InvalidArgumentError,
    NotRunningError,
    PartitionNotReadyError,
    PeerUnavailableError,
)
from peer_ring.kv._args import count, seconds
from peer_ring.kv._codec import Codec, decode_value
from peer_ring.kv._map import KVMap
from peer_ring.kv._record import Record, reconcile
from peer_ring.kv._status import cluster_status
from peer_ring.kv._store_base import KVStoreBase
from peer_ring.kv._versions import Version
from peer_ring.kv._wire import decode_get_response, encode_record

if TYPE_CHECKING:
    from peer_ring.kv._store import KVStore

#: Read-modify-write operations, executed by the key's primary. Never hinted: a substitute
#: must not apply them later on its own.
COND = Command("cond", mutates=True, hinted=False)
#: One page of the keys of one partition (checks the partition's readiness itself).
SCAN = Command("scan")

#: Largest page a scan asks a replica for.
MAX_SCAN_PAGE = 10_000


class KVOpsMixin(KVStoreBase):
    """The operations of this module; :class:`KVStore` provides the attributes."""

    _op_locks: dict[bytes, tuple[asyncio.Lock, int]]

    def map(self, name: str) -> KVMap:
        """A named key space of this store: its keys never collide with another map's.

        Example:
            >>> sessions = kv.map("sessions")                 # doctest: +SKIP
            >>> await sessions.set("42", {"user": "alice"}, ttl=3600)
        """
        return KVMap(cast("KVStore", self), name)

    def cluster_status(self) -> dict[str, Any]:
        """This node's view of the cluster: the document ``GET /cluster`` serves (members,
        suspected peers, partitions per member, zones, data movement...), JSON-friendly."""
        return cluster_status(cast("KVStore", self))

    # -- registration --------------------------------------------------------------------

    def _register_ops(self, namespace: str) -> None:
        self._op_locks = {}
        self._node.register(namespace, COND, self._h_cond)
        self._node.register(namespace, SCAN, self._h_scan)

    # -- reads -----------------------------------------------------------------------------

    async def _read(self, key: bytes, replication: int | None, quorum: int | None) -> Record | None:
        result = await self._node.execute(
            "kv", "get", key, b"", replication=replication, quorum=quorum
        )
        records = [decode_get_response(p) for p in result.payloads]
        winner = reconcile(key, records, self._resolver)
        if winner is not None:
            result.on_complete(lambda replies: self._repair(key, winner, None, replies))
        if winner is None or not winner.is_live(self._clock.time()):
            return None
        return winner

    async def _read_checked(
        self, key: str | bytes, replication: int | None, quorum: int | None
    ) -> Record | None:
        self._check_running()
        key_b = self._key(key)
        self._check_sizes(replication, quorum)
        return await self._read(key_b, replication, quorum)

    async def exists(
        self, key: str | bytes, *, quorum: int | None = None, replication: int | None = None
    ) -> bool:
        """True when ``key`` has a live value (read with the read quorum)."""
        return await self._read_checked(key, replication, quorum) is not None

    async def ttl(
        self, key: str | bytes, *, quorum: int | None = None, replication: int | None = None
    ) -> float | None:
        """Seconds until ``key`` expires: ``None`` when it is absent, ``math.inf`` when it
        never expires."""
        record = await self._read_checked(key, replication, quorum)
        if record is None:
            return None
        if not record.expires:
            return math.inf
        return max(0.0, record.expires - self._clock.time())

    async def get_versioned(
        self, key: str | bytes, *, quorum: int | None = None, replication: int | None = None
    ) -> tuple[Any, Version] | None:
        """``(value, version)`` of ``key``, or ``None``; pass the version to
        :meth:`compare_and_set`."""
        record = await self._read_checked(key, replication, quorum)
        if record is None:
            return None
        return decode_value(record.value, record.encoded, self._codec), record.version

    # -- read-modify-write, executed by the primary ----------------------------------------

    async def set_if_absent(
        self,
        key: str | bytes,
        value: object,
        *,
        ttl: float | None = None,
        quorum: int | None = None,
        replication: int | None = None,
    ) -> bool:
        """Store ``value`` only if ``key`` has no live value (Redis ``SET NX``).

        Returns:
            True when this call stored it.
        """
        record = self._record(value, ttl)
        out = await self._cond(key, {"op": "setnx"}, record, replication, quorum)
        return bool(out["ok"])

    async def compare_and_set(
        self,
        key: str | bytes,
        value: object,
        *,
        version: Version | None,
        ttl: float | None = None,
        quorum: int | None = None,
        replication: int | None = None,
    ) -> bool:
        """Store ``value`` only if the key's current version is ``version`` (from
        :meth:`get_versioned`); ``version=None`` means "only if absent".

        Returns:
            True when this call stored it.
        """
        if version is not None and not isinstance(version, Version):
            raise InvalidArgumentError("version must be a Version from get_versioned()")
        record = self._record(value, ttl)
        header = {"op": "cas", "expected": None if version is None else list(version)}
        out = await self._cond(key, header, record, replication, quorum)
        return bool(out["ok"])

    async def incr(
        self,
        key: str | bytes,
        delta: int = 1,
        *,
        ttl: float | None = None,
        quorum: int | None = None,
        replication: int | None = None,
    ) -> int:
        """Add ``delta`` to the integer at ``key`` (absent counts as 0) and return the new
        value. ``ttl`` sets a new expiry; without it the current one is kept.

        Raises:
            InvalidArgumentError: ``delta`` is not an ``int``, or the stored value is not an
                integer (an ``int``, or ``bytes`` of ASCII digits as written over HTTP).
        """
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise InvalidArgumentError(f"delta must be an int, got {delta!r}")
        header: dict[str, Any] = {"op": "incr", "delta": delta}
        if ttl is not None:
            header["ttl"] = seconds("ttl", ttl)
        out = await self._cond(key, header, None, replication, quorum)
        return int(out["value"])

    async def decr(
        self,
        key: str | bytes,
        delta: int = 1,
        *,
        ttl: float | None = None,
        quorum: int | None = None,
        replication: int | None = None,
    ) -> int:
        """``incr(key, -delta)``."""
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise InvalidArgumentError(f"delta must be an int, got {delta!r}")
        return await self.incr(key, -delta, ttl=ttl, quorum=quorum, replication=replication)

    async def expire(
        self,
        key: str | bytes,
        ttl: float | None,
        *,
        quorum: int | None = None,
        replication: int | None = None,
    ) -> bool:
        """Give ``key`` a new time to live (``None``: never expire). Returns False when the
        key is absent. ``touch`` is the same call."""
        header: dict[str, Any] = {"op": "expire"}
        if ttl is not None:
            header["ttl"] = seconds("ttl", ttl)
        out = await self._cond(key, header, None, replication, quorum)
        return bool(out["ok"])

    touch = expire

    async def _cond(
        self,
        key: str | bytes,
        header: dict[str, Any],
        record: Record | None,
        replication: int | None,
        quorum: int | None,
    ) -> dict[str, Any]:
        self._check_running()
        key_b = self._key(key)
        self._check_sizes(replication, quorum)
        header["n"] = replication
        header["q"] = quorum
        data = b""
        if record is not None:
            header["expires"] = record.expires
            header["encoded"] = record.encoded
            data = record.value
        payload = json.dumps(header, separators=(",", ":")).encode() + b"\n" + data
        node = self._node
        n = self._config.replication if replication is None else replication
        # The nested read and write each take up to a request timeout.
        timeout = 3 * self._config.request_timeout
        error: Exception | None = None
        for target in node.preference_list(key_b, n):
            try:
                out = await node.call(target, "kv", COND, key_b, payload, timeout=timeout)
            except PeerUnavailableError as exc:  # refused: nothing was applied there
                error = exc
                continue
            result: dict[str, Any] = json.loads(out)
            return result
        raise error or NotRunningError("no replica of the key is known")

    async def _h_cond(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        head, _, data = payload.partition(b"\n")
        header = json.loads(head)
        lock, users = self._op_locks.get(key, (asyncio.Lock(), 0))
        self._op_locks[key] = (lock, users + 1)
        try:
            async with lock:
                return await self._apply(key, header, data)
        finally:
            lock, users = self._op_locks[key]
            if users <= 1:
                del self._op_locks[key]
            else:
                self._op_locks[key] = (lock, users - 1)

    async def _apply(self, key: bytes, header: dict[str, Any], data: bytes) -> bytes:
        n = count("replication", header.get("n"))
        q = count("quorum", header.get("q"))
        current = await self._read(key, n, q)
        if current is not None:
            self._hlc.update(current.version)  # the new version orders after it
        op = header["op"]
        now = self._clock.time()
        new: Record | None = None
        reply: dict[str, Any] = {"ok": False}
        if op == "setnx" or op == "cas":
            expected = header.get("expected")
            if op == "setnx" or expected is None:
                allowed = current is None
            else:
                allowed = current is not None and list(current.version) == expected
            if allowed:
                new = Record(
                    data, self._hlc.now(), float(header["expires"]), False, bool(header["encoded"])
                )
        elif op == "incr":
            value = _integer(current, self._codec) + int(header["delta"])
            expires = current.expires if current is not None else 0.0
            if "ttl" in header:
                expires = now + float(header["ttl"])
            if current is not None and not current.encoded:
                stored, encoded = str(value).encode(), False
            else:
                stored, encoded = self._codec.encode(value), True
            new = Record(stored, self._hlc.now(), expires, False, encoded)
            reply["value"] = value
        elif op == "expire":
            if current is not None:
                expires = now + float(header["ttl"]) if "ttl" in header else 0.0
                new = Record(current.value, self._hlc.now(), expires, False, current.encoded)
        else:
            raise InvalidArgumentError(f"unknown operation {op!r}")
        if new is not None:
            await self._write(key, encode_record(new), n, q)
            reply["ok"] = True
        return json.dumps(reply).encode()

    # -- batches and scans -----------------------------------------------------------------

    async def mdelete(
        self,
        keys: Iterable[str | bytes],
        *,
        quorum: int | None = None,
        replication: int | None = None,
    ) -> None:
        """Delete several keys in one round trip per replica node (a tombstone per key,
        a write quorum per key).

        Raises:
            QuorumNotReachedError: some key got fewer than ``quorum`` acknowledgements (the
                first such key's error; the other keys may be deleted).
        """
        self._check_running()
        keys_b = list(dict.fromkeys(self._key(k) for k in keys))
        self._check_sizes(replication, quorum)
        items = [(k, encode_record(Record.deleted(self._hlc.now()))) for k in keys_b]
        results = await self._node.execute_many(
            "kv", "set", items, replication=replication, quorum=quorum
        )
        for result in results:
            if result.error is not None:
                raise result.error

    def _h_scan(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        request = json.loads(payload)
        partition = int(request["p"])
        if not 0 <= partition < self._engine.partitions:
            raise InvalidArgumentError(f"no partition {partition}")
        if not self._node.partition_ready(partition):
            raise PartitionNotReadyError(self._node.address, partition)
        after = None if request["after"] is None else bytes.fromhex(request["after"])
        limit = min(int(request["limit"]), MAX_SCAN_PAGE)
        keys = self._engine.keys(partition, bytes.fromhex(request["prefix"]), after, limit)
        return json.dumps([k.hex() for k in keys]).encode()

    async def scan_page(
        self, prefix: bytes = b"", cursor: str | None = None, count: int = 100
    ) -> tuple[list[bytes], str | None]:
        """One page of the keys starting with ``prefix``, partition by partition.

        Each partition is read from one replica (the local one when it is ready), so a
        scan is eventually consistent: a key written a moment ago may be missing, a key
        just deleted may still show. Keys are in byte order within a partition.

        Args:
            prefix: the keys' prefix (bytes).
            cursor: ``None`` to start, then the cursor the previous page returned.
            count: most keys per page (1 to 10 000).

        Returns:
            ``(keys, cursor)``; ``cursor`` is ``None`` after the last page.
        """
        self._check_running()
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10_000:
            raise InvalidArgumentError(f"count must be an integer from 1 to 10000, got {count!r}")
        partition, after = _parse_cursor(cursor, self._engine.partitions)
        keys: list[bytes] = []
        while partition < self._engine.partitions and len(keys) < count:
            want = count - len(keys)
            page = await self._scan_partition(partition, prefix, after, want)
            keys.extend(page)
            if len(page) == want:
                return keys, f"{partition}:{page[-1].hex()}"
            partition, after = partition + 1, None
        if partition >= self._engine.partitions:
            return keys, None
        return keys, f"{partition}:"

    async def _scan_partition(
        self, partition: int, prefix: bytes, after: bytes | None, limit: int
    ) -> list[bytes]:
        node = self._node
        replicas = node.ring.preference_list(partition, self._config.replication)
        if node.address in replicas and node.partition_ready(partition):
            return self._engine.keys(partition, prefix, after, limit)
        request = json.dumps(
            {
                "p": partition,
                "prefix": prefix.hex(),
                "after": None if after is None else after.hex(),
                "limit": limit,
            }
        ).encode()
        error: Exception | None = None
        for target in replicas:
            if target == node.address:
                continue
            try:
                out = await node.call(target, "kv", SCAN, b"scan", request)
            except (PeerUnavailableError, PartitionNotReadyError) as exc:
                error = exc
                continue
            return [bytes.fromhex(k) for k in json.loads(out)]
        raise error or NotRunningError(f"no replica of partition {partition} answered")

    @overload
    def scan(self, prefix: str = "", *, count: int = 100) -> AsyncIterator[str]: ...
    @overload
    def scan(self, prefix: bytes, *, count: int = 100) -> AsyncIterator[bytes]: ...
    async def scan(
        self, prefix: str | bytes = "", *, count: int = 100
    ) -> AsyncIterator[str | bytes]:
        """Every live key starting with ``prefix`` (see :meth:`scan_page`), fetched
        ``count`` at a time. A ``str`` prefix yields ``str`` keys (keys that are not UTF-8
        are skipped), a ``bytes`` prefix ``bytes`` keys."""
        text = isinstance(prefix, str)
        raw = prefix.encode() if isinstance(prefix, str) else prefix
        cursor: str | None = None
        while True:
            keys, cursor = await self.scan_page(raw, cursor, count)
            for key in keys:
                if not text:
                    yield key
                    continue
                try:
                    yield key.decode()
                except UnicodeDecodeError:
                    continue
            if cursor is None:
                return


def _parse_cursor(cursor: str | None, partitions: int) -> tuple[int, bytes | None]:
    if cursor is None:
        return 0, None
    try:
        head, _, tail = cursor.partition(":")
        partition = int(head)
        after = bytes.fromhex(tail) if tail else None
    except ValueError:
        raise InvalidArgumentError(f"not a scan cursor: {cursor!r}") from None
    if not 0 <= partition <= partitions:
        raise InvalidArgumentError(f"not a scan cursor: {cursor!r}")
    return partition, after


def _integer(record: Record | None, codec: Codec) -> int:
    if record is None:
        return 0
    value = decode_value(record.value, record.encoded, codec)
    if isinstance(value, bytes):
        try:
            return int(value.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidArgumentError("the value is not an integer")
