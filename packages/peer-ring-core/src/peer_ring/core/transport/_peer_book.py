"""The peer links of a transport: what the gRPC and TCP transports do with them alike.

:class:`PeerBook` is a base class of :class:`~._grpc.GrpcTransport` and
:class:`~._tcp.TcpTransport`: requests to a peer go to its link (made on first use by the
transport's ``_connection``), reachability changes go to the listeners, a departed peer's
link is shut down. The transports differ only in how a link is made (``_connection``) and,
for gRPC, in what forgetting a link must remember (``_forgetting``). The fields below are
set by the transport's ``__init__``.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Generic, TypeVar

from peer_ring.core._errors import NotRunningError, PeerUnavailableError
from peer_ring.core._types import Request, Response
from peer_ring.core.transport._base import CallOwner, ReachabilityListener
from peer_ring.core.transport._outbound import PeerConnection

#: The transport's kind of link.
Link = TypeVar("Link", bound=PeerConnection)


class PeerBook(Generic[Link]):
    """Requests, connects, listeners and forgetting, over the transport's peer links."""

    _address: str
    _peers: dict[str, Link]
    _listeners: list[ReachabilityListener]
    _closing: set[asyncio.Task[None]]
    _running: bool
    _closed: bool
    #: The transport module's logger (a failing listener is logged under its name).
    _logger: logging.Logger

    def _connection(self, peer: str) -> Link:
        """The link to ``peer``, made (and kept in ``_peers``) if there is none."""
        raise NotImplementedError

    def _forgetting(self, conn: Link) -> None:
        """``conn`` is about to be shut down by :meth:`forget_peer` (a hook; nothing here)."""

    def request(self, peer: str, request: Request) -> asyncio.Future[Response]:
        """Send ``request`` to ``peer``; the future resolves with its response.

        Never raises: network problems, deadlines and limits fail the future with
        ``PeerUnavailableError``, ``RequestTimeoutError``, ``MessageTooLargeError``,
        ``OverloadedError`` or ``NotRunningError``. Creates no asyncio Task.
        """
        conn = self._peers.get(peer)
        if conn is None:
            if not self._running:
                fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
                fut.set_exception(self._not_running())
                return fut
            conn = self._connection(peer)
        return conn.request(request)

    def submit(
        self,
        peer: str,
        owner: CallOwner,
        hint: str,
        namespace: str,
        command: str,
        key: bytes,
        payload: bytes,
        partition: int,
        timeout: float,
    ) -> None:
        """Send a request given by its fields to ``peer``; its outcome goes to ``owner``
        (see :meth:`Transport.submit`). No :class:`Request` object. Never raises."""
        conn = self._peers.get(peer)
        if conn is None:
            if not self._running:  # failed through the loop, as every failure is
                fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
                fut.set_exception(self._not_running())
                fut.add_done_callback(partial(owner.on_done, peer, hint))
                return
            conn = self._connection(peer)
        conn.submit(owner, hint, namespace, command, key, payload, partition, timeout)

    async def connect(self, peer: str) -> None:
        """Open the link to ``peer`` now (otherwise the first request does).

        Raises:
            PeerUnavailableError: the attempt failed (the transport keeps retrying).
            NotRunningError: the transport is not started.
        """
        if not self._running:
            raise self._not_running()
        await self._connection(peer).wait_up()

    def add_reachability_listener(self, listener: ReachabilityListener) -> None:
        """Register a callback for peers becoming (un)reachable.

        Called with ``(peer, False)`` when the link to the peer broke or could not be
        opened, and ``(peer, True)`` when it is up (again). Only changes are reported.
        """
        self._listeners.append(listener)

    def forget_peer(self, peer: str) -> None:
        """Close the connection to ``peer``; its pending requests fail with
        ``PeerUnavailableError``. A later request to it connects afresh."""
        conn = self._peers.pop(peer, None)
        if conn is None:
            return
        self._forgetting(conn)
        conn.shutdown(lambda: PeerUnavailableError(peer, "peer left the cluster"))
        task = asyncio.get_running_loop().create_task(conn.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def peers(self) -> list[str]:
        """Peers this transport currently holds a connection object for."""
        return list(self._peers)

    def _not_running(self) -> NotRunningError:
        if self._closed:
            return NotRunningError(f"transport {self._address} is closed")
        return NotRunningError(f"transport {self._address} is not started")

    def _notify(self, peer: str, reachable: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(peer, reachable)
            except Exception:
                self._logger.exception("reachability listener failed for %s", peer)
