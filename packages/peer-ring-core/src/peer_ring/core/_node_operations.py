"""What an application asks of a running node: where a key lives, and running commands.

:class:`NodeOperations` is the part of :class:`~peer_ring.core.PeerRing` that applications
call per operation: ``preference_list`` / ``is_replica`` / ``partition_for_key`` on the
current ring, ``execute``, ``execute_many``, ``send``, ``call`` (all run by the
:class:`~peer_ring.core._coordinator.Coordinator`) and ``transfer`` (a partition's records
from a peer). :mod:`peer_ring.core._node` builds the parts these use and runs the node's
lifecycle.

While no tracer provider is configured, a node's ``execute`` is the coordinator's own,
bound per instance (:meth:`NodeOperations._look_for_tracing`): an operation costs no
call of this class's ``execute`` and no tracing check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from peer_ring.core import _tracing
from peer_ring.core._command import Command
from peer_ring.core._result import ExecuteResult
from peer_ring.core._types import TransferRequest

if TYPE_CHECKING:
    from peer_ring.core._config import PeerRingConfig
    from peer_ring.core._coordinator import Coordinator
    from peer_ring.core._membership import Membership
    from peer_ring.core.transport._base import Transport


class NodeOperations:
    """The operations API of :class:`~peer_ring.core.PeerRing` (see the module docstring).

    Not used on its own: ``PeerRing.__init__`` sets the attributes declared here.
    """

    _address: str
    _config: PeerRingConfig
    _membership: Membership
    _transport: Transport
    _coord: Coordinator

    def preference_list(self, key: bytes | str, replication: int | None = None) -> tuple[str, ...]:
        """The replicas of ``key`` in preference order (owner first)."""
        ring = self._membership.ring
        n = replication or self._config.replication
        return ring.preference_list(ring.partition_for_key(key), n)

    def is_replica(self, key: bytes | str, replication: int | None = None) -> bool:
        """True when this node is one of the ``replication`` replicas of ``key``."""
        return self._address in self.preference_list(key, replication)

    def partition_for_key(self, key: bytes | str) -> int:
        """The partition of ``key`` in this node's ring (``str`` keys are UTF-8 encoded)."""
        return self._membership.ring.partition_for_key(key)

    def execute(
        self,
        namespace: str,
        command: Command | str,
        key: bytes | str,
        payload: bytes = b"",
        *,
        replication: int | None = None,
        quorum: int | None = None,
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, ExecuteResult]:
        """Run a command on the replicas of ``key`` and wait for a quorum (a coroutine).

        For hinted commands, a replica that is suspected or fails is replaced by the next
        healthy node of the ring walk, which holds the command as a hint for it (its reply
        counts toward the quorum and carries its own address). For reading commands, a
        replica that is still pulling the partition is replaced by one of the partition's
        previous holders.

        Args:
            namespace: the application namespace the command belongs to.
            command: the :class:`Command` (or its registered name).
            key: the key (``str`` is UTF-8 encoded); it selects the replicas.
            payload: opaque bytes passed to the handlers.
            replication: number of replicas N (default from the config).
            quorum: successful replies needed (default: the config's, or a majority).
            timeout: seconds before unanswered replicas count as failed.

        Returns:
            An :class:`ExecuteResult` with at least ``quorum`` successful replies; slower
            replicas' replies keep arriving in it (``on_complete``/``all_replies``).

        Raises:
            InvalidArgumentError: bad replication/quorum (e.g. quorum > replication), or
                a :class:`Command` that differs from the one registered under its name.
            QuorumNotReachedError: too few replicas succeeded; names the failed replicas
                and their errors (unknown command, timeout, unreachable...).
            NotRunningError: the node is not started.
        """
        # Reached only while tracing is on (else the instance's ``execute`` is the
        # coordinator's, see _look_for_tracing). A plain def handing out a coroutine.
        coro = self._coord.execute(
            namespace,
            command,
            key,
            payload,
            replication=replication,
            quorum=quorum,
            timeout=timeout,
        )
        if _tracing.enabled():
            return _tracing.execute(coro, namespace, _command_name(command))
        return coro

    def _look_for_tracing(self) -> None:
        """Look for a tracer provider (on start, then every ``_tracing._CHECK_EVERY``
        operations, counted by the coordinator) and pick the ``execute`` to use.

        Without one (the usual case), this node's ``execute`` is bound to the coordinator's
        own (same signature and coroutine): an operation calls it directly, with no
        :meth:`execute` layer and no tracing check. With one, the instance attribute goes
        and the class's :meth:`execute` wraps each operation in its span; tracing, once on,
        stays on.
        """
        coord = self._coord
        if _tracing.look():
            self.__dict__.pop("execute", None)
            coord.untraced_left = -1
        else:
            # setattr: mypy forbids assigning to a method; this shadows it per instance.
            setattr(self, "execute", coord.execute)  # noqa: B010
            coord.untraced_left = _tracing._CHECK_EVERY

    async def execute_many(
        self,
        namespace: str,
        command: Command | str,
        items: Iterable[tuple[bytes | str, bytes]],
        *,
        replication: int | None = None,
        quorum: int | None = None,
        timeout: float | None = None,
    ) -> list[ExecuteResult]:
        """Run one command on many keys: one request per peer, a quorum per key.

        The keys are grouped by replica node and each peer receives one request carrying
        its items (split only past half the transport's message limit); the same handler
        runs for each item as with :meth:`execute`, and sloppy quorum, hinted handoff and
        read forwarding apply per key exactly as there.

        Args:
            namespace: the application namespace.
            command: the :class:`Command` (or its registered name).
            items: ``(key, payload)`` pairs; a key may appear more than once.
            replication: replicas N of every key (default from the config).
            quorum: successful replies needed per key.
            timeout: seconds before unanswered replicas count as failed.

        Returns:
            One :class:`ExecuteResult` per item, in the order of ``items``, once every key
            reached its quorum or can no longer reach it. A key that failed has ``ok``
            false and its :class:`QuorumNotReachedError` in ``error``: per-key failures
            are never raised.

        Raises:
            InvalidArgumentError: bad replication/quorum/command, or a payload that is not
                ``bytes`` (nothing is sent then).
            NotRunningError: the node is not started.
        """
        coro = self._coord.execute_many(namespace, command, items, replication, quorum, timeout)
        if _tracing.enabled():
            return await _tracing.execute_many(coro, namespace, _command_name(command))
        return await coro

    def send(
        self,
        namespace: str,
        command: Command | str,
        key: bytes | str,
        payload: bytes = b"",
        *,
        replication: int = 1,
        nodes: Collection[str] | None = None,
    ) -> None:
        """Fire and forget: run a command on the first ``replication`` replicas of ``key``
        (or on the explicit ``nodes``) without waiting for any answer.

        For applications that reconcile asynchronously (read repair, a rate limiter's
        global counts). Delivery failures are counted (``sync_status()["send"]``) and
        logged at debug level, never raised; nothing is retried or hinted.

        Raises:
            InvalidArgumentError: a bad command, key or replication (programming errors).
        """
        self._coord.send(namespace, command, key, payload, replication, nodes)

    async def call(
        self,
        node: str,
        namespace: str,
        command: Command | str,
        key: bytes | str = b"",
        payload: bytes = b"",
        *,
        timeout: float | None = None,
    ) -> bytes:
        """Run a command on one specific node and return its result.

        The handler runs through the same path as for :meth:`execute` (a reading command
        waits for, or is refused on, a partition still being pulled there).

        Raises:
            The typed error of the failure (``PeerUnavailableError``,
            ``RequestTimeoutError``, ``UnknownCommandError``, ``RemoteError``...);
            ``NotRunningError`` when this node is not started.
        """
        return await self._coord.call(node, namespace, command, key, payload, timeout)

    async def transfer(
        self,
        node: str,
        namespace: str,
        partition: int,
        buckets: Collection[int] = (),
    ) -> AsyncIterator[list[bytes]]:
        """Stream the records ``node`` exports for one partition (bulk data movement)."""
        request = TransferRequest(namespace, partition, tuple(sorted(buckets)))
        chunks = self._transport.transfer(node, request, self._config.transfer_timeout)
        if _tracing.enabled():
            chunks = _tracing.transfer(chunks, node, namespace, partition)
        async for chunk in chunks:
            yield chunk


def _command_name(command: Command | str) -> str:
    return command.name if isinstance(command, Command) else str(command)
