"""A narrow, typed wrapper around kazoo: the only module that touches it.

kazoo ships no type hints, so everything untyped stays in this file and the discovery
logic sees a small typed surface. It also fixes the threading rules in one place:

* kazoo calls state listeners on its connection thread and watch callbacks on its
  callback thread. The wrapper forwards both as plain typed callbacks; the caller
  (:class:`~peer_ring.discovery.zookeeper.ZooKeeperDiscovery`) only hands them to its event
  loop with ``loop.call_soon_threadsafe``. Nothing here calls ZooKeeper from a listener:
  doing so from the connection thread would deadlock the client.
* Requests use kazoo's ``*_async`` methods, which only queue the request. Their
  ``IAsyncResult`` is bridged to an asyncio future with ``rawlink`` (the link runs on
  kazoo's completion thread and only schedules the future's completion on the loop), so
  no executor thread blocks per request. Connecting is ``start_async`` plus the
  ``CONNECTED`` state event; only kazoo's ``stop`` blocks, and runs in ``asyncio.to_thread``.
* kazoo's exceptions are mapped to the few internal ones of ``_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kazoo import exceptions as kz_errors  # type: ignore[import-untyped]
from kazoo.client import KazooClient  # type: ignore[import-untyped]
from kazoo.handlers.threading import KazooTimeoutError  # type: ignore[import-untyped]
from kazoo.protocol.states import KazooState  # type: ignore[import-untyped]
from kazoo.security import CREATOR_ALL_ACL  # type: ignore[import-untyped]

from peer_ring.discovery.zookeeper._errors import (
    ZkBadVersion,
    ZkNodeExists,
    ZkNoNode,
    ZkRequestError,
    ZkUnavailable,
)

T = TypeVar("T")

# Errors that mean "no answer now, try again once connected": the session or the
# connection is gone, or the server did not answer in time.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    kz_errors.ConnectionLoss,
    kz_errors.SessionExpiredError,  # ConnectionClosedError is a subclass
    kz_errors.SessionMovedError,
    kz_errors.OperationTimeoutError,
    kz_errors.RequestTimeoutError,
    kz_errors.ZookeeperStoppedError,
    kz_errors.ThrottledOpError,
    KazooTimeoutError,
)


class SessionState(enum.Enum):
    """kazoo's simplified connection states."""

    #: Connected, with a live session.
    CONNECTED = "connected"
    #: Connection lost; the session may still be alive on the server (ephemerals kept).
    SUSPENDED = "suspended"
    #: The session is gone (expired, or the client closed); its ephemeral nodes are deleted.
    LOST = "lost"


_STATES = {
    KazooState.CONNECTED: SessionState.CONNECTED,
    KazooState.SUSPENDED: SessionState.SUSPENDED,
    KazooState.LOST: SessionState.LOST,
}


@dataclass(frozen=True, slots=True)
class NodeStat:
    """The parts of a znode's ``Stat`` discovery uses."""

    #: Session id owning the (ephemeral) node; 0 for a persistent node.
    owner_session: int
    #: Data version, for conditional deletes.
    version: int


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, kz_errors.NodeExistsError):
        return ZkNodeExists(str(exc) or "node exists")
    if isinstance(exc, kz_errors.NoNodeError):
        return ZkNoNode(str(exc) or "no node")
    if isinstance(exc, kz_errors.BadVersionError):
        return ZkBadVersion(str(exc) or "bad version")
    if isinstance(exc, _UNAVAILABLE):
        return ZkUnavailable(f"{type(exc).__name__}: {exc}".rstrip(": "))
    if isinstance(exc, kz_errors.KazooException):
        return ZkRequestError(f"{type(exc).__name__}: {exc}".rstrip(": "))
    return exc


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # the waiter may have timed out or been cancelled
        future.set_result(result)


class ZkClient:
    """One kazoo client (one ZooKeeper session at a time), typed.

    Args:
        hosts: ``host:port,host:port`` of the ensemble.
        session_timeout: requested session timeout in seconds (the server clamps it to
            its ``minSessionTimeout``..``maxSessionTimeout``).
        reconnect_max_delay: longest pause between reconnection rounds. kazoo's default
            grows to an hour, which would leave a node disconnected long after ZooKeeper
            came back.
        request_timeout: seconds to wait for the answer to one request.
        on_state: called with each state change, on a kazoo thread.
        digest: ``user:password`` credentials: the session authenticates with them (again
            on every reconnection) and creates nodes readable and writable only by the
            same identity (ZooKeeper's "creator all" ACL).
    """

    def __init__(
        self,
        hosts: str,
        *,
        session_timeout: float,
        reconnect_max_delay: float,
        request_timeout: float,
        on_state: Callable[[SessionState], None],
        digest: str | None = None,
    ) -> None:
        self._on_state = on_state
        self._request_timeout = request_timeout
        self._client: Any = KazooClient(
            hosts=hosts,
            timeout=session_timeout,
            connection_retry={
                "max_tries": -1,  # never give up: later outages are survived
                "delay": 0.1,
                "backoff": 2,
                "max_jitter": 0.2,
                "max_delay": reconnect_max_delay,
            },
            auth_data=[("digest", digest)] if digest else None,
            default_acl=CREATOR_ALL_ACL if digest else None,
        )
        self._client.add_listener(self._listener)

    def _listener(self, state: Any) -> None:
        # kazoo's connection thread: never block, never call ZooKeeper from here.
        mapped = _STATES.get(state)
        if mapped is not None:
            self._on_state(mapped)

    # -- connecting and closing ----------------------------------------------------------

    def connect(self) -> None:
        """Start connecting, without waiting: kazoo connects (and reconnects) on its own
        thread and reports ``CONNECTED`` through ``on_state``. Does not block: a fresh
        client has no earlier connection to wait for."""
        self._client.start_async()

    # -- blocking: run with asyncio.to_thread -------------------------------------------

    def close_blocking(self) -> None:
        """Close the session (its ephemeral nodes go at once) and release the client."""
        try:
            self._client.stop()
        finally:
            self._client.close()

    # -- state ----------------------------------------------------------------------------

    @property
    def session_id(self) -> int | None:
        """The current session id while connected, else None."""
        client_id = self._client.client_id
        return None if client_id is None else int(client_id[0])

    @property
    def session_password(self) -> bytes | None:
        """The current session's password while connected (tests use it to expire it)."""
        client_id = self._client.client_id
        return None if client_id is None else bytes(client_id[1])

    def forget_last_zxid(self) -> None:
        """Let the next reconnection reach a server that is behind what this client saw.

        A ZooKeeper server refuses a client that has seen a newer transaction id than its
        own ("client must try another server"). After a server lost its data (restarted
        empty) kazoo would retry that refusal forever, never reaching the "session
        expired" answer that starts a new session. Zero makes every server acceptable;
        a server that still knows the session simply revalidates it. Called from the
        event loop while disconnected; kazoo reads the int when it next connects.
        """
        self._client.last_zxid = 0

    # -- requests (awaitable; never block the loop) ----------------------------------------

    async def _wait(self, async_result: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def link(result: Any) -> None:
            # kazoo's completion thread (or this thread if the handler already stopped).
            # A closed loop means nobody waits for this any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, result)

        async_result.rawlink(link)
        try:
            ready = await asyncio.wait_for(future, self._request_timeout)
        except TimeoutError:
            raise ZkUnavailable(f"no answer within {self._request_timeout:g} s") from None
        try:
            return ready.get_nowait()
        except Exception as exc:
            raise _translate(exc) from None

    async def ensure_path(self, path: str) -> None:
        """Create ``path`` and its missing parents as persistent nodes."""
        await self._wait(self._client.ensure_path_async(path))

    async def create_ephemeral(self, path: str, data: bytes) -> None:
        """Create an ephemeral node owned by the current session."""
        await self._wait(self._client.create_async(path, data, ephemeral=True))

    async def stat(self, path: str) -> NodeStat | None:
        """The node's owner and version, or None when it does not exist."""
        stat = await self._wait(self._client.exists_async(path))
        if stat is None:
            return None
        return NodeStat(owner_session=int(stat.ephemeralOwner), version=int(stat.version))

    async def get_data(self, path: str) -> bytes | None:
        """The node's data, or None when it does not exist (any more)."""
        try:
            data, _stat = await self._wait(self._client.get_async(path))
        except ZkNoNode:
            return None
        return bytes(data or b"")

    async def delete(self, path: str, version: int) -> None:
        """Delete the node if it still has ``version``."""
        await self._wait(self._client.delete_async(path, version=version))

    async def children(self, path: str, watch: Callable[[], None]) -> list[str]:
        """The children of ``path``, leaving a one-shot watch that calls ``watch()``.

        kazoo also fires the watch (with an empty event) when the connection is lost: the
        server-side watch is gone then, and the caller must list again once reconnected.
        """
        names = await self._wait(self._client.get_children_async(path, watch=_Watch(watch)))
        return [str(n) for n in names]


class _Watch:
    """A watch callback that drops kazoo's event argument.

    kazoo keeps watchers in a set, so equal instances (same target) are one watcher:
    listing the same path twice before it fires does not fire ``target`` twice.
    """

    __slots__ = ("_target",)

    def __init__(self, target: Callable[[], None]) -> None:
        self._target = target

    def __call__(self, _event: Any) -> None:
        self._target()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Watch) and other._target == self._target

    def __hash__(self) -> int:
        return hash(self._target)


def close_session(hosts: str, session_id: int, password: bytes, timeout: float = 10.0) -> None:
    """Close a live session from another client (blocking; for fault tests).

    A second client attaches to the session with its id and password (the server then
    drops the first client's connection) and closes it: the server deletes the session's
    ephemeral nodes, and the first client's next reconnection is told the session expired.
    This is a real server-side expiry, without waiting for the timeout.
    """
    client: Any = KazooClient(hosts=hosts, client_id=(session_id, password))
    try:
        client.start(timeout=timeout)
        client.stop()
    finally:
        client.close()
