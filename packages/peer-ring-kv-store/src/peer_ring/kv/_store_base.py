"""What the parts of :class:`~peer_ring.kv.KVStore` share: its attributes and helper methods.

``KVStore`` is assembled from mixins, one module each (the replica handlers, the batches, the
atomic operations and scans). Each of them uses attributes that ``KVStore.__init__`` sets and
helpers that ``KVStore`` defines; :class:`KVStoreBase` declares them once, for the type
checker, instead of a copy of the declarations in every mixin. At run time it adds nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peer_ring.core import Clock, PeerRing, PeerRingConfig, Reply
from peer_ring.kv._codec import Codec
from peer_ring.kv._engine import KVEngine
from peer_ring.kv._hlc import HLC
from peer_ring.kv._record import Record, Resolver


class KVStoreBase:
    """The attributes and helpers of :class:`~peer_ring.kv.KVStore` its mixins use."""

    _node: PeerRing
    _engine: KVEngine
    _hlc: HLC
    _clock: Clock
    _codec: Codec
    _config: PeerRingConfig
    _resolver: Resolver | None
    reversioned_writes: int

    if TYPE_CHECKING:
        # Defined by KVStore (_store.py); declared here so that each mixin type-checks alone.

        def _key(self, key: str | bytes) -> bytes: ...
        def _check_running(self) -> None: ...
        def _check_sizes(self, replication: int | None, quorum: int | None) -> None: ...
        def _record(self, value: object, ttl: float | None) -> Record: ...
        def _repair(
            self,
            key: bytes,
            winner: Record,
            winner_payload: bytes | None,
            replies: list[Reply],
        ) -> None: ...
        async def _write(
            self, key: bytes, payload: bytes, replication: int | None, quorum: int | None
        ) -> None: ...
        def _register_ops(self, namespace: str) -> None: ...
