"""``KVStore``: the embedded, replicated key-value store.

Each process runs one ``KVStore``; together they form a cluster. A write gets a hybrid
logical clock version on the coordinating node and goes to the key's N replicas; it is
acknowledged once W of them stored it. A read asks the replicas, waits for R answers,
reconciles them (last writer wins, or the application's resolver) and repairs the replicas
that answered with an older version (Dynamo §4.5 read repair). With R + W > N every read
overlaps every acknowledged write.

This module holds the store's state, lifecycle and single-key client API (the per-operation
paths); the replica-side handlers are in :mod:`peer_ring.kv._store_replica`, a write's bytes
and quorum in :mod:`peer_ring.kv._store_write`, ``mget``/``mset`` in
:mod:`peer_ring.kv._store_batch` and the other operations in :mod:`peer_ring.kv._ops`
(mixins :class:`KVStore` inherits).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import logging
import struct
from types import TracebackType
from typing import Any

from peer_ring.core import (
    Clock,
    Discovery,
    InvalidArgumentError,
    LeaveReport,
    NotRunningError,
    PeerRing,
    PeerRingConfig,
    Reply,
    SystemClock,
    Transport,
)
from peer_ring.kv._args import MAX_KEY_BYTES as _MAX_KEY_BYTES
from peer_ring.kv._args import check_sizes, key_bytes, seconds
from peer_ring.kv._codec import DEFAULT_CODEC, Codec, decode_value
from peer_ring.kv._engine import KVEngine
from peer_ring.kv._engine_layout import _fp64
from peer_ring.kv._expiry import run_active_expiry
from peer_ring.kv._hlc import HLC
from peer_ring.kv._hooks import KVHooks
from peer_ring.kv._ops import KVOpsMixin
from peer_ring.kv._record import Record, Resolver
from peer_ring.kv._replies import agreed_value, reconcile_answers, stale_nodes
from peer_ring.kv._status import clock_offsets_snapshot
from peer_ring.kv._store_batch import K, KVBatchMixin
from peer_ring.kv._store_replica import GET, MGET, MSET, NAMESPACE, SET, KVReplicaMixin
from peer_ring.kv._store_write import MAX_WIRE_VALUE, KVWriteMixin
from peer_ring.kv._wire import RECORD_HEAD, encode_record

logger = logging.getLogger(__name__)


#: Longest accepted key, in bytes (UTF-8 for ``str`` keys).
MAX_KEY_BYTES = _MAX_KEY_BYTES
# A str of at most this many characters is at most MAX_KEY_BYTES once UTF-8 encoded.
_SHORT_KEY = MAX_KEY_BYTES // 4
# At most this many remembered per-call size pairs (a bound: callers use a few).
_MAX_SIZES_OK = 64
_pack_record_head = RECORD_HEAD.pack

Key = str | bytes

# The commands, replica handlers and multi-key operations live in their own modules; the
# names callers import from here stay importable from here.
__all__ = [
    "GET",
    "MAX_KEY_BYTES",
    "MGET",
    "MSET",
    "NAMESPACE",
    "SET",
    "K",
    "KVStore",
    "Key",
]


class KVStore(KVReplicaMixin, KVWriteMixin, KVBatchMixin, KVOpsMixin):
    """An embedded, replicated in-memory key-value store.

    Args:
        discovery: how this node finds the others (``StaticDiscovery``,
            ``KubernetesDiscovery``...); its ``self_address`` is this node's identity.
        replication: default number of replicas N of every key.
        quorum: default read and write quorum (default: a majority of ``replication``).
        codec: how non-``bytes`` values are encoded; ``bytes`` always pass through
            untouched. The default is JSON-based and safe to decode from any peer.
        resolver: ``resolver(key, records) -> record`` to reconcile replicas that disagree;
            default: the highest version wins (last writer wins).
        max_bytes: memory bound of this node's data (LRU eviction); ``None``: unbounded.
        max_value_bytes: largest accepted encoded value; larger ones raise
            :class:`ValueTooLargeError`.
        tombstone_grace: seconds a delete marker is kept before it is collected (must
            exceed the time a replica can stay away and come back: anti-entropy respects it).
        expiry_interval: seconds between two active-expiry rounds.
        sloppy_quorum: count a substitute's hint towards a write's quorum (Dynamo's sloppy
            quorum: writes succeed with fewer than ``quorum`` replicas reachable). Off by
            default: a hint cannot refuse an older version, so with it on, a write
            acknowledged after another one may lose to it under clock skew
            (docs/consistency.md). Hints are sent and delivered either way.
        config: the underlying node's configuration (partitions, timeouts, limits, token);
            its replication/quorum are overridden by the arguments above.
        transport: inject a transport (tests: ``MemoryNetwork(...).transport(address)``).
        clock: inject a clock (tests: ``FakeClock``).

    Example:
        >>> async with KVStore(discovery=StaticDiscovery(peers, self_address=me)) as kv:
        ...     await kv.set("user:1", b"alice", ttl=30.0, quorum=2)   # doctest: +SKIP
        ...     assert await kv.get("user:1", quorum=2) == b"alice"
    """

    def __init__(
        self,
        discovery: Discovery,
        *,
        replication: int = 3,
        quorum: int | None = None,
        codec: Codec | None = None,
        resolver: Resolver | None = None,
        max_bytes: int | None = None,
        max_value_bytes: int = 1 << 20,
        tombstone_grace: float = 3600.0,
        expiry_interval: float = 0.1,
        sloppy_quorum: bool = False,
        config: PeerRingConfig | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
    ) -> None:
        base = config or PeerRingConfig()
        # replace() keeps every other setting of the node (data movement included).
        self._config = dataclasses.replace(base, replication=replication, quorum=quorum)
        if max_value_bytes < 1:
            raise InvalidArgumentError(f"max_value_bytes must be >= 1, got {max_value_bytes}")
        self._clock: Clock = clock or SystemClock()
        self._node = PeerRing(
            discovery, config=self._config, transport=transport, clock=self._clock
        )
        self._codec = codec or DEFAULT_CODEC
        self._resolver = resolver
        self._max_value_bytes = max_value_bytes
        self._expiry_interval = seconds("expiry_interval", expiry_interval)
        self._engine = KVEngine(
            self._config.partitions,
            self._clock,
            max_bytes=max_bytes,
            tombstone_grace=tombstone_grace,
            resolver=resolver,
        )
        self._hlc = HLC(self._clock, self._node.address)
        # What set() stamps on its records: this node's id as the wire carries it, and
        # the largest value it encodes without the checks of encode_record.
        self._writer = self._node.address.encode()
        self._max_fast_value = min(max_value_bytes, MAX_WIRE_VALUE)
        # A peer's write moves this node's HLC (see _observe), bound once for _h_set.
        self._hlc_observe = self._hlc.observe
        self._address = self._node.address
        self._partitions = self._config.partitions
        # The default write quorum (the configuration is frozen): set() reads it inline.
        self._quorum = self._config.quorum_for(self._config.replication)
        self._hooks = KVHooks(self._engine, on_record=self._observe)
        self._background: set[asyncio.Task[Any]] = set()
        self._expiry_task: asyncio.Task[None] | None = None
        self._sloppy_quorum = sloppy_quorum
        self.read_repairs = 0
        #: Writes sent again above a newer version a replica refused them with.
        self.reversioned_writes = 0
        # Per-call (replication, quorum) pairs check_sizes() accepted under the current
        # ring (exact ints only): applications pass the same few on every call, and the
        # check counts the members (a copy of the member dict) each time. A ring change
        # can make a pair too large for the cluster: the listener forgets them all.
        self._sizes_ok: set[tuple[int, int | None]] = set()
        self._node.add_ring_listener(self._forget_sizes)
        self._register()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def node(self) -> PeerRing:
        """The underlying peer-ring node (address, ring, members)."""
        return self._node

    @property
    def replication(self) -> int:
        """Default number of replicas of every key."""
        return self._config.replication

    @property
    def quorum(self) -> int:
        """Default read and write quorum."""
        return self._config.quorum_for(self._config.replication)

    @property
    def max_value_bytes(self) -> int:
        """Largest accepted encoded value, in bytes."""
        return self._max_value_bytes

    @property
    def engine(self) -> KVEngine:
        """This node's local storage engine."""
        return self._engine

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._node.running

    @property
    def ready(self) -> bool:
        """True once the node joined the ring and finished its initial sync."""
        return self._node.ready

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until :attr:`ready` (see ``PeerRing.wait_ready``)."""
        await self._node.wait_ready(timeout)

    async def start(self) -> None:
        """Join the cluster. Raises ``OSError`` when the address cannot be bound.

        It returns once the node is listening and has joined the ring, before the initial
        sync finished: await :meth:`wait_ready` before serving traffic that needs it.

        Raises:
            OSError: the peer address cannot be bound (``errno.EADDRINUSE`` when another
                process, such as a second uvicorn worker, already runs a node on it).
        """
        try:
            await self._node.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise OSError(
                exc.errno,
                f"{exc.strerror or exc}. A KVStore is one cluster node and needs its own peer "
                "address in every process: with uvicorn --workers or gunicorn, give each "
                "worker its own port or run one worker per process (README: 'One node per "
                "process')",
            ) from exc
        self._expiry_task = asyncio.create_task(
            run_active_expiry(self._engine, self._clock, self._expiry_interval),
            name=f"kv-expiry-{self._node.address}",
        )

    async def stop(
        self, *, graceful: bool = True, deadline: float | None = None
    ) -> LeaveReport | None:
        """Stop this node; by default leave the cluster gracefully first. Idempotent.

        A graceful stop is :meth:`leave`: the peers pull this node's partitions (for at
        most ``deadline`` seconds, default ``config.leave_deadline``) and take it out of
        their ring at once, instead of waiting for their failure detector. A failed
        hand-off is logged and the node stops anyway. ``graceful=False`` (or
        :meth:`abort`) stops at once, as a crash would look to the peers.

        Everything is stopped even when a background task died or the hand-off failed.

        Args:
            graceful: hand the data off before stopping (default).
            deadline: seconds the hand-off may take.

        Returns:
            The hand-off report of a graceful stop of a running node, else ``None``.
        """
        report: LeaveReport | None = None
        try:
            if graceful and self._node.running:
                try:
                    report = await self._node.leave(deadline)
                    logger.info("kv node %s left the ring: %s", self._node.address, report)
                except Exception:
                    logger.exception(
                        "graceful leave of %s failed; stopping without hand-off",
                        self._node.address,
                    )
        finally:
            await self._stop_tasks()
            await self._node.stop()
        return report

    async def abort(self) -> None:
        """Stop at once without handing data off (``stop(graceful=False)``). Idempotent."""
        await self.stop(graceful=False)

    async def _stop_tasks(self) -> None:
        tasks = list(self._background)
        if self._expiry_task is not None:
            tasks.append(self._expiry_task)
            self._expiry_task = None
        for task in tasks:
            task.cancel()
        # return_exceptions: a task that already died (its error was logged) must not keep
        # the node's listener and discovery running.
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                logger.error("kv background task had failed: %r", outcome)

    def clock_offsets(self) -> dict[str, Any]:
        """Estimated wall-clock offsets of the peers to this node (``GET /cluster``).

        ``{"peers": {address: {"offset", "rtt", "age"}}, "max_abs_offset", "warn_at"}``,
        seconds: the core's estimates from its liveness probes (``sync_status()["clock"]``,
        NTP style), in this store's format. ``warn_at`` is where the core logs a warning
        (half ``PeerRingConfig.max_clock_offset``; TTLs and tombstone collection use wall
        time, see docs/consistency.md).
        """
        return clock_offsets_snapshot(self._node.sync_status()["clock"])

    def handoff_state(self) -> dict[str, Any]:
        """Data-movement state for ``GET /cluster`` (see ``PeerRing.sync_status``)."""
        return self._node.sync_status()

    async def leave(self, deadline: float | None = None) -> LeaveReport:
        """Hand this node's data to the other nodes, then stop (``serve`` does it on
        SIGTERM, :meth:`stop` by default). See ``PeerRing.leave``.

        Args:
            deadline: seconds to wait for the peers to pull (default: the config's).

        Raises:
            NotRunningError: the store is not running.
        """
        self._check_running()
        try:
            return await self._node.leave(deadline)
        finally:
            await self.stop(graceful=False)

    async def __aenter__(self) -> KVStore:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A clean exit (or an application error) hands the data off; a cancellation or
        # Ctrl-C stops at once, since waiting for peers is not what an interrupt asks for.
        await self.stop(graceful=exc is None or isinstance(exc, Exception))

    # -- client API ----------------------------------------------------------------------

    def _key(self, key: Key) -> bytes:
        return key_bytes(key)

    def _expires(self, ttl: float | None) -> float:
        if ttl is None:
            return 0.0
        return self._clock.time() + seconds("ttl", ttl)

    def _check_sizes(self, replication: int | None, quorum: int | None) -> None:
        if replication is not None or quorum is not None:
            check_sizes(self._node, replication, quorum)

    def _check_call_sizes(self, replication: object, quorum: object) -> None:
        """``check_sizes``, remembering a pair of exact ints it accepts (see
        ``_sizes_ok``; 3.0 == 3 and True == 1, so nothing else is looked up or kept)."""
        check_sizes(self._node, replication, quorum)
        if type(replication) is int and (quorum is None or type(quorum) is int):
            sizes = self._sizes_ok
            if len(sizes) >= _MAX_SIZES_OK:
                sizes.clear()
            sizes.add((replication, quorum))

    def _forget_sizes(self, old: object, new: object) -> None:
        self._sizes_ok.clear()

    def _check_running(self) -> None:
        if not self._node.running:
            raise NotRunningError(f"KVStore {self._node.address} is not running")

    async def set(
        self,
        key: Key,
        value: object,
        *,
        ttl: float | None = None,
        quorum: int | None = None,
        replication: int | None = None,
    ) -> None:
        """Store ``value`` under ``key`` on ``replication`` replicas; wait for ``quorum``.

        Args:
            key: ``str`` (UTF-8) or ``bytes``.
            value: ``bytes`` are stored untouched; anything else goes through the codec.
            ttl: seconds until the value expires (``None``: never).
            quorum: replicas that must acknowledge (default: the store's).
            replication: replicas to write (default: the store's).

        Raises:
            InvalidArgumentError: bad key, ttl, quorum or replication.
            ValueTooLargeError: the encoded value exceeds ``max_value_bytes``.
            QuorumNotReachedError: fewer than ``quorum`` replicas acknowledged.
        """
        node = self._node
        if not node.running:
            self._check_running()
        try:  # the hot path of get(), which explains it
            key_b = key.encode() if type(key) is str and 0 < len(key) <= _SHORT_KEY else b""
        except UnicodeEncodeError:  # a lone surrogate: _key() raises InvalidKeyError
            key_b = b""
        if not key_b:
            key_b = self._key(key)
        if (
            replication is not None
            or (
                # A per-call quorum alone, the common override, checked inline: an int in
                # 1..replication is what check_sizes() accepts then (bool is not int here).
                quorum is not None
                and not (type(quorum) is int and 0 < quorum <= self._config.replication)
            )
        ) and not (
            # A pair of exact ints accepted before under this ring (see _sizes_ok).
            type(replication) is int
            and (quorum is None or type(quorum) is int)
            and (replication, quorum) in self._sizes_ok
        ):
            self._check_call_sizes(replication, quorum)
        if type(value) is bytes and ttl is None and len(value) <= self._max_fast_value:
            # _payload() inline for raw bytes without TTL (what it gives, byte for byte).
            physical, logical, _ = self._hlc.now()
            writer = self._writer
            try:
                payload = b"".join(
                    (
                        _pack_record_head(0, physical, logical, 0.0, len(writer), len(value)),
                        writer,
                        value,
                    )
                )
            except struct.error:  # a clock beyond the wire's u64: _payload raises
                payload = self._payload(value, ttl)
        else:
            payload = self._payload(value, ttl)
        # The first attempt of _write() inline, and its common outcome: a quorum of the key's
        # replicas stored the write (empty replies) and none refused it.
        result = await node.execute(
            NAMESPACE, SET, key_b, payload, replication=replication, quorum=quorum
        )
        if not self._sloppy_quorum:
            if quorum is not None:
                q = quorum
            elif replication is None:
                q = self._quorum
            else:
                q = self._config.quorum_for(replication)
            prefs = result.preference_list
            acks = 0
            for reply in result.replies:
                if reply.error is None:
                    if reply.payload:
                        acks = -1  # a refusal, or bytes to look at: _write's general path
                        break
                    if reply.node in prefs:
                        acks += 1
            if acks >= q:
                return
        await self._write(key_b, payload, replication, quorum, result)

    async def delete(
        self, key: Key, *, quorum: int | None = None, replication: int | None = None
    ) -> None:
        """Delete ``key`` (writes a tombstone, so the delete wins over older copies)."""
        self._check_running()
        key_b = self._key(key)
        self._check_sizes(replication, quorum)
        await self._write(
            key_b, encode_record(Record.deleted(self._hlc.now())), replication, quorum
        )

    async def get(
        self,
        key: Key,
        default: Any = None,
        *,
        quorum: int | None = None,
        replication: int | None = None,
    ) -> Any:
        """The value of ``key``, or ``default`` when it is absent, deleted or expired.

        With ``quorum=1`` on a node that replicates the key, the local copy answers with no
        network round trip.

        Raises:
            InvalidArgumentError: bad key, quorum or replication.
            QuorumNotReachedError: fewer than ``quorum`` replicas answered.
        """
        node = self._node
        if not node.running:
            self._check_running()
        # Hot path (issue 6: a local read in a few microseconds). A str of at most
        # MAX_KEY_BYTES // 4 characters is at most MAX_KEY_BYTES once UTF-8 encoded, so only
        # unusual keys pay for _key()'s checks.
        # A surrogate that UTF-8 cannot encode goes to _key() too (InvalidKeyError).
        try:
            key_b = key.encode() if type(key) is str and 0 < len(key) <= _SHORT_KEY else b""
        except UnicodeEncodeError:
            key_b = b""
        if not key_b:
            key_b = self._key(key)
        if (
            replication is not None
            or (
                # A per-call quorum alone, the common override, checked inline: an int in
                # 1..replication is what check_sizes() accepts then (bool is not int here).
                quorum is not None
                and not (type(quorum) is int and 0 < quorum <= self._config.replication)
            )
        ) and not (
            # A pair of exact ints accepted before under this ring (see _sizes_ok).
            type(replication) is int
            and (quorum is None or type(quorum) is int)
            and (replication, quorum) in self._sizes_ok
        ):
            self._check_call_sizes(replication, quorum)
        config = self._config
        n = config.replication if replication is None else replication
        q = config.quorum_for(n) if quorum is None else quorum
        if q == 1:
            # One hash for both the ring and the readiness check (the engine uses the
            # ring's partition count), and no second liveness check: engine.get() already
            # returns None for absent, deleted and expired keys.
            partition = _fp64(key_b) % self._partitions  # KVEngine.partition_of
            # (this node in ring.preference_list(partition, n), and partition_ready)
            if node.reads_here(partition, n):
                found = self._engine.get_value(key_b, partition)
                if found is None:
                    return default
                data, encoded = found
                return decode_value(data, True, self._codec) if encoded else data
        # replication/quorum as given: the core's fast path for the defaults (None).
        result = await node.execute(NAMESPACE, GET, key_b, replication=replication, quorum=quorum)
        if result.complete:
            # Every replica asked has answered: nothing to repair when they agree, the
            # common case, and then only the value is needed (no Record).
            agreed = agreed_value(result.replies, self._clock)
            if agreed:
                data, encoded = agreed
                return decode_value(data, True, self._codec) if encoded else data
            if agreed is not None:
                return default  # absent, deleted or expired
        winner, payload = reconcile_answers(key_b, result.payloads, self._resolver)
        if winner is None:
            return default
        if payload is None or not result.complete:
            result.on_complete(functools.partial(self._repair, key_b, winner, payload))
        # else every replica asked has answered, each ok one with the winner's bytes:
        # nothing to repair (_repair would find no stale replica).
        if winner.tombstone or (winner.expires and winner.expires <= self._clock.time()):
            return default  # deleted or expired (Record.is_live)
        return decode_value(winner.value, winner.encoded, self._codec)

    def _repair(
        self,
        key: bytes,
        winner: Record,
        winner_payload: bytes | None,
        replies: list[Reply],
    ) -> None:
        """Send the reconciled record to replicas that answered with an older one
        (``winner_payload``: the winner's answer bytes, when known, to skip decoding)."""
        stale = stale_nodes(winner, winner_payload, replies)
        node = self._node
        if not stale or not node.running:
            return
        self.read_repairs += len(stale)
        if node.address in stale:
            stale.remove(node.address)
            self._engine.put(key, winner)
        if stale:
            # Fire and forget: a repair that does not arrive is retried by the next read
            # or by anti-entropy.
            node.send(NAMESPACE, SET, key, encode_record(winner), nodes=stale)

    def stats(self) -> dict[str, int | float]:
        """Counters of this node's store (keys, bytes, evictions, expiries, repairs)."""
        engine_stats: dict[str, int | float] = dict(self._engine.stats())
        engine_stats["read_repairs"] = self.read_repairs
        engine_stats["reversioned_writes"] = self.reversioned_writes
        engine_stats["clock_offset_max_seconds"] = self.clock_offsets()["max_abs_offset"]
        engine_stats["members"] = len(self._node.members)
        return engine_stats
