"""The node-local store of topic partitions, its replica commands and its data hooks.

Every node keeps the :class:`PartitionState` of the topic partitions it replicates, keyed by
ring key (``topic/partition``). The replica commands (STATUS, PROMISE, RANGE, APPEND,
GROUP) only merge into this store; the sequencer logic lives in :mod:`._leader`. The store
is also the namespace's ``DataHooks``: the core moves its records on joins, leaves and
losses, and they merge like everything else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

from peer_ring.core import DIGEST_BUCKETS, CommandContext, InvalidArgumentError, bucket_for_key
from peer_ring.pubsub._codec import CodecError
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._log import PartitionLog
from peer_ring.pubsub._state import PartitionState, decode_record
from peer_ring.pubsub._wire import (
    AppendRequest,
    GroupRequest,
    ReplicaStatusReply,
    decode_config_ballot,
    decode_range,
    encode_entries_reply,
)

logger = logging.getLogger(__name__)

_RANGE_MAX_BYTES = 1024 * 1024


class RefusedError(InvalidArgumentError):
    """A replica refused a promise or an append of an older epoch (fencing)."""


class Store:
    """Topic-partition states on this node (pure state plus the replica handlers).

    Args:
        partition_of: the core partition of a ring key (``node.partition_for_key``).
        wall: wall-clock seconds (retention by age).
    """

    def __init__(self, partition_of: Callable[[bytes], int], wall: Callable[[], float]) -> None:
        self._partition_of = partition_of
        self._wall = wall
        self.states: dict[bytes, PartitionState] = {}
        self._by_partition: dict[int, set[bytes]] = {}
        self._own_appends: dict[int, tuple[bytes, AppendRequest]] = {}
        #: Called with a ring key whenever an append or a group change was merged.
        self.on_change: Callable[[bytes], None] = lambda key: None

    # ------------------------------------------------------------------ access
    def get(self, key: bytes) -> PartitionState | None:
        """The state of ``key`` if this node holds it."""
        return self.states.get(key)

    def state(self, key: bytes, config: TopicConfig) -> PartitionState:
        """The state of ``key``, created empty with ``config`` on first use."""
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = PartitionState(PartitionLog(config))
            self._by_partition.setdefault(self._partition_of(key), set()).add(key)
        return state

    def keys_of(self, partition: int) -> set[bytes]:
        """Ring keys this node holds in core partition ``partition``."""
        return set(self._by_partition.get(partition, ()))

    # ------------------------------------------------------- replica handlers
    def handle_status(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        config, _ = decode_config_ballot(payload)
        return self._status(self.state(key, config), groups=False).encode()

    def handle_promise(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        config, ballot = decode_config_ballot(payload)
        state = self.state(key, config)
        if not state.log.promise(ballot):
            raise RefusedError(
                f"promise for epoch {ballot.epoch} refused: "
                f"epoch {state.log.promised.epoch} was promised to {state.log.promised.node}"
            )
        return self._status(state, groups=True).encode()

    def handle_range(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        config, start, upto, limit = decode_range(payload)
        log = self.state(key, config).log
        begin = max(start, log.first)
        entries = []
        size = 0
        for entry in log.read(begin, upto, limit):
            entries.append(entry)
            size += entry.size
            if size > _RANGE_MAX_BYTES:
                break
        return encode_entries_reply(log.first, dict(log.epoch_starts), entries)

    def handle_append(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        own = self._own_appends.get(id(payload))
        mine = own is not None and own[0] is payload  # this node's own sequencer sent it
        req = own[1] if own is not None and mine else AppendRequest.decode(payload)
        self.apply_append(key, req)
        return b""

    @contextlib.contextmanager
    def own_append(self, payload: bytes, req: AppendRequest) -> Iterator[None]:
        """While replicating ``payload`` (the encoding of ``req``), this node's own copy
        merges ``req`` instead of decoding the bytes it was just encoded into (the core
        hands a local replica the very same payload object)."""
        self._own_appends[id(payload)] = (payload, req)
        try:
            yield
        finally:
            self._own_appends.pop(id(payload), None)

    def apply_append(self, key: bytes, req: AppendRequest) -> None:
        """Merge an append (the APPEND handler; the sequencer calls it directly for its own
        copy of a single-copy partition).

        Raises:
            RefusedError: a newer epoch was promised (the sequencer is fenced off).
        """
        state = self.state(key, req.config)
        log = state.log
        if not log.accepts(req.ballot.epoch):
            raise RefusedError(
                f"append of epoch {req.ballot.epoch} refused: epoch {log.promised.epoch} "
                "was promised since"
            )
        log.config = req.config
        if req.ballot.epoch > log.promised.epoch:
            log.promised = req.ballot
        log.start_epoch(req.ballot.epoch, req.start)
        log.note_commit(req.commit)
        for entry in req.entries:
            log.add(entry)
        for name, delta in req.groups:  # delivery records riding on the append
            state.merge_group(name, delta)
        log.apply_retention(self._wall())
        self.on_change(key)

    def handle_group(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.apply_group(key, GroupRequest.decode(payload))
        return b""

    def apply_group(self, key: bytes, req: GroupRequest) -> None:
        """Merge a group delta (the GROUP handler, or directly: see :meth:`apply_append`).

        Raises:
            RefusedError: a newer epoch was promised (the sequencer is fenced off).
        """
        state = self.state(key, req.config)
        if not state.log.accepts(req.epoch):
            raise RefusedError(
                f"group update of epoch {req.epoch} refused: epoch "
                f"{state.log.promised.epoch} was promised since"
            )
        state.merge_group(req.group, req.delta)
        self.on_change(key)

    @staticmethod
    def _status(state: PartitionState, *, groups: bool) -> ReplicaStatusReply:
        log = state.log
        return ReplicaStatusReply(
            max_epoch=log.max_epoch,
            last=log.last,
            first=log.first,
            commit=log.commit,
            epoch_starts=dict(log.epoch_starts),
            groups={n: g.copy() for n, g in state.groups.items()} if groups else {},
        )

    # -------------------------------------------------------------- DataHooks
    def export_partition(
        self, partition: int, buckets: Collection[int] | None = None
    ) -> Iterable[bytes]:
        """Every record of the topic partitions in core partition ``partition``."""
        return list(self._export(partition, buckets))

    def _export(self, partition: int, buckets: Collection[int] | None) -> Iterator[bytes]:
        for key in sorted(self.keys_of(partition)):
            if buckets is not None and bucket_for_key(key) not in buckets:
                continue
            state = self.states.get(key)
            if state is not None and state.log.config.durable:  # non-durable: never moves
                yield from state.records(key)

    def apply_records(self, partition: int, records: Sequence[bytes]) -> None:
        """Merge records from another replica (idempotent, any order)."""
        for record in records:
            try:
                decoded = decode_record(record, TopicConfig())
            except (CodecError, ValueError) as exc:
                logger.warning("pubsub: dropped a malformed record (%s)", exc)
                continue
            state = self.state(decoded.key, decoded.config or TopicConfig())
            if decoded.config is not None:
                state.log.config = decoded.config
            state.merge(decoded.state)
            self.on_change(decoded.key)

    def drop_partition(self, partition: int) -> None:
        """Forget the topic partitions of core partition ``partition``."""
        for key in self._by_partition.pop(partition, set()):
            self.states.pop(key, None)

    def digest_partition(self, partition: int) -> Sequence[bytes]:
        """One digest per bucket over the topic partitions held in ``partition``."""
        per_bucket: list[list[bytes]] = [[] for _ in range(DIGEST_BUCKETS)]
        for key in self.keys_of(partition):
            state = self.states.get(key)
            if state is not None and state.log.config.durable:
                per_bucket[bucket_for_key(key)].append(key + state.digest())
        return [b"".join(sorted(items)) if items else b"" for items in per_bucket]
