"""peer-ring KV store: an embedded, replicated, in-memory key-value store.

Example:
    async with KVStore(discovery=StaticDiscovery(peers, self_address=me), replication=3) as kv:
        await kv.set("user:1", b"alice", ttl=30.0, quorum=2)
        assert await kv.get("user:1", quorum=2) == b"alice"
        await kv.delete("user:1")
"""

from peer_ring.kv.__about__ import __version__
from peer_ring.kv._codec import Codec, CodecError, JsonCodec, PickleCodec
from peer_ring.kv._engine import KVEngine
from peer_ring.kv._errors import (
    ClusterTooSmallError,
    InvalidKeyError,
    InvalidValueError,
    KeyTooLargeError,
    ValueTooLargeError,
)
from peer_ring.kv._expiry import run_active_expiry
from peer_ring.kv._hlc import HLC
from peer_ring.kv._hooks import KVHooks
from peer_ring.kv._map import KVMap
from peer_ring.kv._record import Record, Resolver, latest, reconcile
from peer_ring.kv._store import NAMESPACE, KVStore
from peer_ring.kv._sync_facade import SyncKVStore
from peer_ring.kv._versions import Version
from peer_ring.kv._wire import MalformedPayloadError

__all__ = [
    "HLC",
    "NAMESPACE",
    "ClusterTooSmallError",
    "Codec",
    "CodecError",
    "InvalidKeyError",
    "InvalidValueError",
    "JsonCodec",
    "KVEngine",
    "KVHooks",
    "KVMap",
    "KVStore",
    "KeyTooLargeError",
    "MalformedPayloadError",
    "PickleCodec",
    "Record",
    "Resolver",
    "SyncKVStore",
    "ValueTooLargeError",
    "Version",
    "__version__",
    "latest",
    "reconcile",
    "run_active_expiry",
]
