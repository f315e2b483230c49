"""``ZooKeeperDiscovery``: members are ephemeral znodes under one path, watched."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from peer_ring.core import InvalidArgumentError, Member
from peer_ring.discovery.zookeeper._errors import (
    ZkBadVersion,
    ZkNodeExists,
    ZkNoNode,
    ZkRequestError,
    ZkUnavailable,
    ZooKeeperDiscoveryError,
)
from peer_ring.discovery.zookeeper._kazoo import SessionState, ZkClient
from peer_ring.discovery.zookeeper._members import (
    decode_member,
    encode_member,
    snapshot_key,
    validate_address,
    validate_metadata,
    validate_path,
)

logger = logging.getLogger(__name__)

#: Where member nodes live unless told otherwise.
DEFAULT_PATH = "/peer-ring/members"
#: Requested session timeout (seconds): a killed node leaves the view this long after.
DEFAULT_SESSION_TIMEOUT = 10.0

# Retry delays of the sync loop after an error while connected (a timeout, a refusal).
_RETRY_MIN = 0.1
_RETRY_MAX = 5.0
# How many create/delete rounds registration tries against a node of another session.
_REGISTER_ATTEMPTS = 5


@dataclass(slots=True)
class ZooKeeperStats:
    """Counters of one :class:`ZooKeeperDiscovery` (read them through ``stats``)."""

    #: Connection losses (kazoo SUSPENDED).
    suspensions: int = 0
    #: Sessions lost (kazoo LOST: expired, or closed by the server).
    expirations: int = 0
    #: Successful creations of this node's znode (the first one included).
    registrations: int = 0
    #: Nodes of another session deleted to take this address back (a previous incarnation).
    replaced_nodes: int = 0
    #: Member lists read.
    syncs: int = 0
    #: Seconds from the last session loss to this node's znode existing again.
    last_reregistration_seconds: float | None = None


class ZooKeeperDiscovery:
    """Discovers peer-ring members through ZooKeeper (implements ``Discovery``).

    Each node creates an ephemeral znode ``<path>/<self_address>`` holding its metadata as
    JSON, lists ``<path>``'s children with a watch, and reports the full member set each
    time it changes. A killed node's znode disappears when its session expires (after
    ``session_timeout``); a stopped node's at once (``stop()`` closes the session).

    Recovery:

    * **Connection lost** (kazoo ``SUSPENDED``): the session may still be alive, so the
      last view is kept and marked :attr:`stale`; no departure is reported because
      ZooKeeper cannot be asked. On reconnection the view is listed again.
    * **Session expired** (kazoo ``LOST``): this node's znode is gone for everyone. Once
      kazoo has a new session, the node registers again and lists again.
    * **A previous incarnation's znode** (a process restarted within the session timeout
      of its predecessor): ``create`` finds the node of another session; it is deleted
      (conditionally on its version) and created again under this session.

    kazoo runs its callbacks on its own threads; they only hand events to the event loop
    (``loop.call_soon_threadsafe``). Every ZooKeeper request is made from the loop, never
    from a kazoo callback.

    Args:
        hosts: the ensemble, ``"zk1:2181,zk2:2181"`` or a sequence of ``host:port``.
        self_address: this node's peer (gRPC) ``host:port``: its identity in the ring.
        path: the folder of member znodes (created if missing). Clusters sharing an
            ensemble use different paths.
        metadata: this node's labels (``{"zone": "eu-1a"}``), visible to every peer as
            ``Member.metadata``.
        session_timeout: requested ZooKeeper session timeout in seconds; the server clamps
            it to its ``minSessionTimeout``..``maxSessionTimeout`` (by default 2..20 ticks).
        startup_timeout: how long ``start()`` waits for a first connection.
        request_timeout: seconds allowed for one ZooKeeper request.
        reconnect_max_delay: longest pause between reconnection attempts during an outage.
        digest: ``user:password`` for ZooKeeper's digest authentication. The member znodes
            (and the path, when discovery creates it) then get the "creator all" ACL: only
            clients with the same credentials (the other members) can read or change them.
            Without it, znodes are world-readable and writable (ZooKeeper's open ACL).

    Raises:
        InvalidArgumentError: a bad address, path, hosts list, metadata or timeout.
    """

    def __init__(
        self,
        hosts: str | list[str] | tuple[str, ...],
        self_address: str,
        *,
        path: str = DEFAULT_PATH,
        metadata: Mapping[str, str] | None = None,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT,
        startup_timeout: float = 10.0,
        request_timeout: float = 10.0,
        reconnect_max_delay: float = 1.0,
        digest: str | None = None,
    ) -> None:
        self._hosts = _normalize_hosts(hosts)
        if digest is not None and (":" not in digest or digest.startswith(":")):
            raise InvalidArgumentError("digest must be user:password")
        self._digest = digest
        self._self_address = validate_address(self_address)
        self._path = validate_path(path)
        for name, value in (
            ("session_timeout", session_timeout),
            ("startup_timeout", startup_timeout),
            ("request_timeout", request_timeout),
            ("reconnect_max_delay", reconnect_max_delay),
        ):
            if not value > 0:
                raise InvalidArgumentError(f"{name} must be > 0 seconds, got {value!r}")
        self._self_member = Member(self._self_address, validate_metadata(metadata))
        self._node_path = f"{self._path}/{self._self_address}"
        self._data = encode_member(self._self_member)
        self._session_timeout = float(session_timeout)
        self._startup_timeout = float(startup_timeout)
        self._request_timeout = float(request_timeout)
        self._reconnect_max_delay = float(reconnect_max_delay)

        self._zk: ZkClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._zxid_reset: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._first_connect = asyncio.Event()
        self._connected = False
        self._stale = False
        self._registered_session: int | None = None
        self._lost_at: float | None = None
        self._bad_names: set[str] = set()
        self._stats = ZooKeeperStats()

        self._members: frozenset[Member] = frozenset({self._self_member})
        self._key = snapshot_key(self._members)
        self._version = 0
        self._started_version = 0
        self._changed = asyncio.Event()
        self._stopping = False

    # -- read-only state ----------------------------------------------------------------

    @property
    def self_address(self) -> str:
        """This node's ``host:port``: its identity in the ring and its znode's name."""
        return self._self_address

    @property
    def path(self) -> str:
        """The folder of member znodes."""
        return self._path

    @property
    def members(self) -> frozenset[Member]:
        """The current member set (the last snapshot)."""
        return self._members

    @property
    def stale(self) -> bool:
        """True while the view may be out of date: connection or session lost since the
        last successful listing. The view is kept as it was meanwhile."""
        return self._stale

    @property
    def connected(self) -> bool:
        """True while kazoo reports a live connection."""
        return self._connected

    @property
    def session_id(self) -> int | None:
        """The current ZooKeeper session id (None while disconnected)."""
        return self._zk.session_id if self._zk is not None else None

    @property
    def stats(self) -> ZooKeeperStats:
        """Counters (connection losses, expirations, registrations...)."""
        return self._stats

    def session_credentials(self) -> tuple[int, bytes] | None:
        """``(session id, password)`` of the live session, or None (for fault tests)."""
        zk = self._zk
        if zk is None:
            return None
        sid, password = zk.session_id, zk.session_password
        return None if sid is None or password is None else (sid, password)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> frozenset[Member]:
        """Connect, create the path if needed, register this node, list the members.

        Raises:
            ZooKeeperDiscoveryError: no server answered within ``startup_timeout``, or the
                server refused the path (no permission, parent is an ephemeral node...).
        """
        if self._task is not None:
            return self._members
        if self._stopping:
            raise ZooKeeperDiscoveryError("this ZooKeeperDiscovery was stopped; make a new one")
        self._loop = asyncio.get_running_loop()
        zk = ZkClient(
            self._hosts,
            session_timeout=self._session_timeout,
            reconnect_max_delay=self._reconnect_max_delay,
            request_timeout=self._request_timeout,
            on_state=self._state_from_kazoo,
            digest=self._digest,
        )
        self._zk = zk
        self._first_connect = asyncio.Event()
        try:
            zk.connect()  # kazoo connects on its thread; CONNECTED sets _first_connect
            await asyncio.wait_for(self._first_connect.wait(), self._startup_timeout)
        except TimeoutError:
            await self._close_client()
            raise ZooKeeperDiscoveryError(
                f"ZooKeeper at {self._hosts} is unreachable (no server answered within "
                f"{self._startup_timeout:g} s); check the hosts and that the server runs"
            ) from None
        except BaseException:  # cancelled: close without waiting for kazoo's threads
            self._zk = None
            self._loop.run_in_executor(None, zk.close_blocking)
            raise
        self._connected = True
        try:
            await zk.ensure_path(self._path)
            await self._sync(zk)
        except (ZkUnavailable, ZkRequestError, ZkNoNode, ZkNodeExists, ZkBadVersion) as exc:
            await self._close_client()
            raise ZooKeeperDiscoveryError(
                f"cannot register {self._node_path} on ZooKeeper {self._hosts}: {exc}"
            ) from None
        except BaseException:
            await self._close_client()
            raise
        self._started_version = self._version
        self._task = asyncio.create_task(self._run(), name=f"peer-ring-zk-{self._self_address}")
        logger.info(
            "zookeeper discovery started: %s on %s, self %s, %d members, session 0x%x",
            self._path,
            self._hosts,
            self._self_address,
            len(self._members),
            self._registered_session or 0,
        )
        return self._members

    async def watch(self) -> AsyncIterator[frozenset[Member]]:
        """Yield the member set each time it changes after ``start()``, until ``stop()``."""
        seen = self._started_version
        while not self._stopping:
            if self._version != seen:
                seen = self._version
                yield self._members
                continue
            await self._changed.wait()

    async def stop(self) -> None:
        """Close the session (this node's znode goes at once) and end ``watch()``; idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._changed.set()
        self._wake.set()
        for timer in (self._retry, self._zxid_reset):
            if timer is not None:
                timer.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._close_client()

    async def _close_client(self) -> None:
        zk, self._zk = self._zk, None
        self._connected = False
        if zk is None:
            return
        try:
            # kazoo's stop waits for its connection thread (bounded by kazoo itself).
            await asyncio.to_thread(zk.close_blocking)
        except Exception:  # closing must not fail a stop
            logger.warning("closing the ZooKeeper client failed", exc_info=True)

    # -- events from kazoo threads: only hand them to the loop ------------------------------

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        # A closed loop means the owner is gone; the event no longer matters.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)

    def _state_from_kazoo(self, state: SessionState) -> None:
        self._post(self._on_state, state)

    def _children_from_kazoo(self) -> None:
        self._post(self._wake.set)

    # -- on the loop ------------------------------------------------------------------------

    def _on_state(self, state: SessionState) -> None:
        if self._stopping or self._zk is None:
            return  # stopping, or a start() that failed: kazoo's closing LOST is not news
        if state is not SessionState.SUSPENDED and self._zxid_reset is not None:
            self._zxid_reset.cancel()
            self._zxid_reset = None
        if state is SessionState.CONNECTED:
            if not self._connected and self._task is not None:
                logger.info("zookeeper discovery %s: connected again", self._self_address)
            self._connected = True
            self._first_connect.set()
            self._wake.set()
        elif state is SessionState.SUSPENDED:
            self._connected = False
            self._stats.suspensions += 1
            self._mark_stale("connection to ZooKeeper lost; the session may still be alive")
            if self._zxid_reset is None and self._loop is not None:
                self._zxid_reset = self._loop.call_later(
                    self._session_timeout, self._allow_server_behind
                )
        else:
            self._connected = False
            self._registered_session = None
            self._lost_at = time.monotonic()
            self._stats.expirations += 1
            self._mark_stale("ZooKeeper session lost; this node will register again")

    def _allow_server_behind(self) -> None:
        # Disconnected for a whole session timeout: if the server is up but refuses us
        # because it lost its data (it is "behind" our last zxid), only a reconnection
        # without that zxid gets the "session expired" answer that starts a new session.
        self._zxid_reset = None
        if self._connected or self._stopping or self._zk is None:
            return
        logger.info(
            "zookeeper discovery %s: disconnected for %.0f s; from now on also accepting a "
            "server behind the last seen transaction (in case ZooKeeper lost its data)",
            self._self_address,
            self._session_timeout,
        )
        self._zk.forget_last_zxid()

    def _mark_stale(self, why: str) -> None:
        if not self._stale:
            logger.warning(
                "zookeeper discovery %s: %s; keeping the last view of %d members (stale)",
                self._self_address,
                why,
                len(self._members),
            )
        self._stale = True

    def _retry_in(self, delay: float) -> None:
        if self._retry is not None:
            self._retry.cancel()
        loop = self._loop
        if loop is not None:
            self._retry = loop.call_later(delay, self._wake.set)

    async def _run(self) -> None:
        delay = _RETRY_MIN
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            zk = self._zk
            if zk is None or not self._connected:
                continue  # the next CONNECTED event wakes the loop again
            try:
                await self._sync(zk)
            except ZkUnavailable as exc:
                # Usually the connection went away mid-sync (then CONNECTED wakes us); if
                # it was a request timeout on a live connection, the timer retries.
                logger.info("zookeeper discovery %s: sync interrupted: %s", self._self_address, exc)
            except (ZkRequestError, ZkNoNode, ZkNodeExists, ZkBadVersion) as exc:
                logger.warning("zookeeper discovery %s: sync failed: %s", self._self_address, exc)
            except Exception:  # a bug must not end discovery: log it and retry
                logger.exception("zookeeper discovery %s: sync failed", self._self_address)
            else:
                delay = _RETRY_MIN
                continue
            self._retry_in(delay)
            delay = min(delay * 2, _RETRY_MAX)

    async def _sync(self, zk: ZkClient) -> None:
        """Register if this session has not, list the members with a watch, publish."""
        session = zk.session_id
        if session is None:
            raise ZkUnavailable("not connected")
        if self._registered_session != session:
            await self._register(zk, session)
        names = await zk.children(self._path, self._children_from_kazoo)
        if self._self_address not in names:
            # Deleted while this session lives (by an operator, or by a process that took
            # the address and then left): register again.
            logger.warning("zookeeper discovery: %s vanished; registering again", self._node_path)
            await self._register(zk, session)
            names = await zk.children(self._path, self._children_from_kazoo)
        datas = await asyncio.gather(*(zk.get_data(f"{self._path}/{n}") for n in names))
        found: dict[str, Member] = {}
        for name, data in zip(names, datas, strict=True):
            if data is None:
                continue  # deleted since listed; its watch event follows
            member = decode_member(name, data)
            if member is None:
                if name not in self._bad_names:
                    self._bad_names.add(name)
                    logger.warning("ignoring %s/%s: not a host:port name", self._path, name)
                continue
            found[member.address] = member
        # This node is in its own view even between a session loss and its re-registration.
        found[self._self_address] = self._self_member
        self._stats.syncs += 1
        self._publish(frozenset(found.values()))
        if self._stale and self._connected:
            logger.info(
                "zookeeper discovery %s: view fresh again (%d members)",
                self._self_address,
                len(self._members),
            )
            self._stale = False

    async def _register(self, zk: ZkClient, session: int) -> None:
        """Create this node's ephemeral znode under ``session``."""
        for _ in range(_REGISTER_ATTEMPTS):
            try:
                await zk.create_ephemeral(self._node_path, self._data)
                break
            except ZkNoNode:
                await zk.ensure_path(self._path)  # the folder was deleted under us
                continue
            except ZkNodeExists:
                stat = await zk.stat(self._node_path)
                if stat is None:
                    continue  # gone in between: create again
                if stat.owner_session == session:
                    break  # ours: an earlier create went through before an answer got lost
                # Another session's node for this address: a previous incarnation of this
                # node (kill -9 and restart within the session timeout), or a persistent
                # node left by hand. This process owns the address now.
                logger.warning(
                    "zookeeper discovery: replacing %s of session 0x%x (a previous "
                    "incarnation of this node, whose session has not expired yet)",
                    self._node_path,
                    stat.owner_session,
                )
                self._stats.replaced_nodes += 1
                with contextlib.suppress(ZkNoNode, ZkBadVersion):
                    await zk.delete(self._node_path, stat.version)
        else:
            raise ZkRequestError(
                f"{self._node_path} keeps being re-created by another session: is another "
                "process running with the same address?"
            )
        self._registered_session = session
        self._stats.registrations += 1
        if self._lost_at is not None:
            took = time.monotonic() - self._lost_at
            self._lost_at = None
            self._stats.last_reregistration_seconds = took
            logger.info(
                "zookeeper discovery: %s registered again %.3f s after the session loss",
                self._node_path,
                took,
            )

    def _publish(self, members: frozenset[Member]) -> None:
        key = snapshot_key(members)
        if key == self._key:
            return
        before = {m.address for m in self._members}
        after = {m.address for m in members}
        logger.info(
            "zookeeper discovery: %d members (+%s -%s)",
            len(members),
            sorted(after - before),
            sorted(before - after),
        )
        self._members = members
        self._key = key
        self._version += 1
        # Wake the watcher: swap the event so the next wait blocks until the next change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def _normalize_hosts(hosts: str | list[str] | tuple[str, ...]) -> str:
    items = hosts.split(",") if isinstance(hosts, str) else list(hosts)
    items = [h.strip() for h in items if h and h.strip()]
    if not items:
        raise InvalidArgumentError("hosts is empty: give ZooKeeper's host:port list")
    for item in items:
        if "/" in item:
            raise InvalidArgumentError(
                f"hosts entry {item!r} has a '/': a chroot is not supported here, put the "
                "whole folder in path= instead"
            )
        host, sep, port = item.rpartition(":")
        if sep and host and not port.isdigit():
            raise InvalidArgumentError(f"hosts entry {item!r}: the port is not a number")
    return ",".join(items)
