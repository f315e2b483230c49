"""The adapter between the discovery and an etcd v3 client library (``aetcd``).

The discovery calls only :class:`EtcdClient`; this is the one module that imports
``aetcd``, so another client (etcd's gRPC API directly, or its JSON gateway) can replace it
by reimplementing this class. What the adapter adds to the library:

* **A deadline on every call**, including each keep-alive (a fresh ``LeaseKeepAlive``
  stream per request, cancelled at its deadline), so no call can hang a loop.
* **One error vocabulary**: :class:`EtcdUnavailableError` (no answer: retry),
  :class:`EtcdCompactedError` (list again), :class:`EtcdRejectedError` (etcd said no).
* **A fresh channel after a failure**, rotating through the endpoints: gRPC's own
  reconnect backoff grows to minutes, and a connection that went silent (etcd host gone
  without a reset) would otherwise stay in use until TCP gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import aetcd
import aetcd.utils
import grpc

from peer_ring.discovery.etcd._errors import (
    EtcdCompactedError,
    EtcdError,
    EtcdRejectedError,
    EtcdUnavailableError,
)
from peer_ring.discovery.etcd._view import KeyValue, Listing, WatchEvent

logger = logging.getLogger(__name__)

# gRPC channel options: reconnect within a second once etcd is back (the default backoff
# grows to 120 s), and detect a dead connection under an open watch. etcd refuses pings
# more often than every 5 s (--grpc-keepalive-min-time), hence 10 s.
_CHANNEL_OPTIONS: dict[str, Any] = {
    # A fresh channel must really reconnect: with grpc's global subchannel pool it would
    # share the old channel's subchannel, still backing off after the outage.
    "grpc.use_local_subchannel_pool": 1,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 0,
}

# Codes that mean "etcd answered and refused": retrying the same call will not help.
_REJECTED = (aetcd.InvalidArgumentError, aetcd.PreconditionFailedError)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` or ``http://host:port`` -> (host, port).

    Raises:
        ValueError: not an endpoint, or ``https://`` (no TLS support, see the README).
    """
    text = endpoint.strip()
    if text.startswith("https://"):
        raise ValueError(
            f"etcd endpoint {endpoint!r}: TLS is not supported by this client (aetcd 1.0 "
            "opens plaintext channels); use http:// on a trusted network"
        )
    text = text.removeprefix("http://").rstrip("/")
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in text:
        raise ValueError(f"etcd endpoint {endpoint!r} is not host:port or http://host:port")
    return host, int(port)


def _convert(error: BaseException, what: str, endpoint: str) -> EtcdError:
    """One exception of the library (or the deadline) as the adapter's error."""
    if isinstance(error, EtcdError):
        return error
    if isinstance(error, aetcd.RevisionCompactedError):
        return EtcdCompactedError(int(error.compacted_revision))
    if isinstance(error, _REJECTED):
        return EtcdRejectedError(f"etcd at {endpoint} rejected {what}: {error}")
    if isinstance(error, grpc.aio.AioRpcError) and error.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    ):
        return EtcdRejectedError(f"etcd at {endpoint} rejected {what}: {error.details()}")
    if isinstance(error, TimeoutError):
        return EtcdUnavailableError(f"etcd at {endpoint}: {what} got no answer in time")
    detail = str(error) or type(error).__name__
    return EtcdUnavailableError(f"etcd at {endpoint}: {what} failed: {detail}")


def _cancelling() -> bool:
    """Whether the current task is being cancelled (as opposed to a call cancelled under it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class WatchStream:
    """The events of one open watch; :meth:`next` raises :class:`EtcdError` when it breaks.

    A task pumps the library's event iterator into a queue: :meth:`next` may then be
    abandoned at a deadline (the re-list of a quiet watch) without cancelling the
    iterator itself, which would end it for good.
    """

    def __init__(self, watch: Any, endpoint: str, on_error: Callable[[EtcdError], None]) -> None:
        self._watch = watch
        self._endpoint = endpoint
        self._on_error = on_error
        self._queue: asyncio.Queue[WatchEvent | EtcdError] = asyncio.Queue()
        self._pump = asyncio.get_running_loop().create_task(self._run(), name="etcd-watch-pump")

    async def _run(self) -> None:
        try:
            async for event in self._watch:
                kind: Literal["put", "delete"] = "delete" if event.kind == "DELETE" else "put"
                kv = event.kv
                self._queue.put_nowait(
                    WatchEvent(kind, bytes(kv.key), bytes(kv.value), int(kv.mod_revision))
                )
            ended: EtcdError = EtcdUnavailableError(f"etcd at {self._endpoint}: watch ended")
        except asyncio.CancelledError as error:
            if _cancelling():
                raise  # cancel() below
            ended = EtcdUnavailableError(f"etcd at {self._endpoint}: watch interrupted")
            ended.__cause__ = error
        except Exception as error:  # see EtcdClient._call: every error, one vocabulary
            ended = _convert(error, "watch", self._endpoint)
            ended.__cause__ = error
        self._queue.put_nowait(ended)

    async def next(self) -> WatchEvent:
        """The next change (waits for it).

        Raises:
            EtcdCompactedError: etcd compacted the revisions this watch still had to send.
            EtcdUnavailableError: the stream broke or ended.
        """
        item = await self._queue.get()
        if isinstance(item, EtcdError):
            self._queue.put_nowait(item)  # every later call fails the same way
            self._on_error(item)
            raise item
        return item

    async def cancel(self, timeout: float) -> None:
        """Cancel the watch on the server (best effort) and stop the pump."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self._watch.cancel()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump


class EtcdClient:
    """The etcd v3 calls the discovery needs, each with a deadline.

    Args:
        endpoints: ``host:port`` (or ``http://host:port``) of etcd members; a failed call
            moves the next call to the next endpoint.
        request_timeout: the deadline of each call, in seconds.
        username: etcd user (with ``password``) when etcd has authentication on.
        password: that user's password.

    Raises:
        ValueError: no endpoint, a malformed one, or a user without a password.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        request_timeout: float = 5.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        parsed = [parse_endpoint(e) for e in endpoints]
        if not parsed:
            raise ValueError("at least one etcd endpoint is required")
        if (username is None) != (password is None):
            raise ValueError("etcd username and password go together")
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        self._endpoints = parsed
        self._index = 0
        self._timeout = request_timeout
        self._username = username
        self._password = password
        self._client: aetcd.Client | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        """The endpoint the next call goes to."""
        host, port = self._endpoints[self._index]
        return f"{host}:{port}"

    @property
    def request_timeout(self) -> float:
        """The deadline of each call, in seconds."""
        return self._timeout

    def _current(self) -> aetcd.Client:
        if self._client is None:
            host, port = self._endpoints[self._index]
            self._client = aetcd.Client(
                host=host,
                port=port,
                username=self._username,
                password=self._password,
                timeout=self._timeout,
                options=dict(_CHANNEL_OPTIONS),
            )
        return self._client

    def _failed(self, client: aetcd.Client, error: EtcdError) -> None:
        """Drop ``client``'s channel after a connectivity failure; the next call reconnects."""
        if not isinstance(error, EtcdUnavailableError) or client is not self._client:
            return
        self._client = None
        self._index = (self._index + 1) % len(self._endpoints)
        task = asyncio.get_running_loop().create_task(
            self._close_quietly(client, delay=self._timeout)
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_quietly(self, client: aetcd.Client, delay: float = 0.0) -> None:
        # The delay lets calls still running on the old channel end by their own deadlines
        # instead of being cancelled under their callers.
        try:
            if delay:
                await asyncio.sleep(delay)
        finally:  # also when close() cancels the delay
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout):
                    await client.close()

    async def _call(self, what: str, timeout: float | None, op: Any, *args: Any) -> Any:
        client = self._current()
        endpoint = self.endpoint
        try:
            async with asyncio.timeout(self._timeout if timeout is None else timeout):
                await client.connect()
                return await op(client, *args)
        except asyncio.CancelledError as error:
            if _cancelling():
                raise  # this task is being cancelled: let it
            # grpc cancels the calls of a channel being closed (another task's failure
            # replaced it): for this call that is a connectivity failure, not a cancel.
            raise EtcdUnavailableError(f"etcd at {endpoint}: {what} interrupted") from error
        except Exception as error:
            # Everything the library can raise, not only its documented errors: a call on
            # a channel being closed raises grpc's UsageError, a call racing close() an
            # AttributeError. A loop must see one vocabulary, or it would die of the rest.
            converted = _convert(error, what, endpoint)
            self._failed(client, converted)
            raise converted from error

    async def list_prefix(self, prefix: bytes) -> Listing:
        """The keys under ``prefix`` and the revision they were read at."""

        async def op(client: aetcd.Client, key: bytes) -> Listing:
            result = await client.get_prefix(key)
            kvs = tuple(
                KeyValue(bytes(kv.key), bytes(kv.value), kv.mod_revision, kv.lease)
                for kv in result.kvs
            )
            return Listing(int(result.header.revision), kvs)

        result: Listing = await self._call("list", None, op, prefix)
        return result

    async def grant(self, ttl: int) -> tuple[int, int]:
        """Grant a lease of ``ttl`` seconds; returns (lease id, TTL etcd granted)."""

        async def op(client: aetcd.Client, seconds: int) -> tuple[int, int]:
            lease = await client.lease(seconds)
            return int(lease.id), int(lease.ttl)

        result: tuple[int, int] = await self._call("lease grant", None, op, ttl)
        return result

    async def keep_alive(self, lease_id: int, timeout: float) -> int:
        """One keep-alive of ``lease_id``, on its own deadline; returns the TTL etcd answered.

        A TTL ``<= 0`` means etcd does not have the lease any more.
        """

        async def op(client: aetcd.Client, lease: int) -> int:
            reply = await client.refresh_lease(lease)
            if reply is None:
                raise EtcdUnavailableError("keep-alive stream closed without an answer")
            return int(reply.TTL)

        result: int = await self._call("keep-alive", timeout, op, lease_id)
        return result

    async def put(self, key: bytes, value: bytes, lease_id: int = 0) -> int:
        """Write ``key`` (attached to ``lease_id`` unless 0); returns the revision."""

        async def op(client: aetcd.Client, k: bytes, v: bytes, lease: int) -> int:
            result = await client.put(k, v, lease=lease or None)
            return int(result.header.revision)

        result: int = await self._call("put", None, op, key, value, lease_id)
        return result

    async def delete(self, key: bytes) -> None:
        """Delete ``key``."""

        async def op(client: aetcd.Client, k: bytes) -> None:
            await client.delete(k)

        await self._call("delete", None, op, key)

    async def revoke(self, lease_id: int) -> None:
        """Revoke ``lease_id`` (its keys are deleted at once)."""

        async def op(client: aetcd.Client, lease: int) -> None:
            await client.revoke_lease(lease)

        await self._call("lease revoke", None, op, lease_id)

    async def compact(self, revision: int) -> None:
        """Compact etcd's history up to ``revision`` (used by tests and operators)."""

        async def op(client: aetcd.Client, rev: int) -> None:
            await client.compact(rev, physical=True)

        await self._call("compact", None, op, revision)

    async def watch(self, prefix: bytes, start_revision: int) -> WatchStream:
        """Open a watch on ``prefix`` from ``start_revision`` (inclusive).

        Returns once etcd confirmed the watch.

        Raises:
            EtcdCompactedError: ``start_revision`` is compacted.
            EtcdUnavailableError: etcd did not confirm the watch in time.
        """

        async def op(client: aetcd.Client, key: bytes, start: int) -> Any:
            return await client.watch(
                key, range_end=aetcd.utils.prefix_range_end(key), start_revision=start
            )

        client = self._current()
        watch = await self._call("watch", None, op, prefix, start_revision)
        return WatchStream(watch, self.endpoint, lambda error: self._failed(client, error))

    async def close(self) -> None:
        """Close the channel; idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await self._close_quietly(client)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
