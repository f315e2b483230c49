"""Node configuration: every tunable in one place, each documented."""

from __future__ import annotations

from dataclasses import dataclass, field

from peer_ring.core._errors import InvalidArgumentError
from peer_ring.core._ring import DEFAULT_PARTITIONS
from peer_ring.core.transport._base import TransportLimits


@dataclass(frozen=True, slots=True)
class PeerRingConfig:
    """Settings of one :class:`~peer_ring.core.PeerRing` node.

    Attributes:
        partitions: fixed number of partitions P; every member must agree.
        replication: default number of replicas N per key (per-call override).
        quorum: default number of successful replies W/R needed; ``None`` means a
            majority of ``replication`` (N // 2 + 1).
        request_timeout: default seconds a replicated operation may take.
        transport_limits: message size, in-flight and reconnect bounds of the transport.
        token: shared secret peers must present (None disables the check).
        suspicion_timeout: seconds a peer stays suspected after the transport reported
            it unreachable, unless it answers again sooner.
        transfer_timeout: seconds to wait for each chunk of a partition transfer.
    """

    partitions: int = DEFAULT_PARTITIONS
    replication: int = 3
    quorum: int | None = None
    request_timeout: float = 2.0
    transport_limits: TransportLimits = field(default_factory=TransportLimits)
    token: str | None = None
    suspicion_timeout: float = 5.0
    transfer_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise InvalidArgumentError(f"partitions must be >= 1, got {self.partitions}")
        check_replication(self.replication, self.quorum)
        if self.request_timeout <= 0:
            raise InvalidArgumentError(f"request_timeout must be > 0, got {self.request_timeout}")

    def quorum_for(self, replication: int) -> int:
        """The default quorum for ``replication`` replicas."""
        if self.quorum is not None and self.quorum <= replication:
            return self.quorum
        return replication // 2 + 1


def check_replication(replication: int, quorum: int | None) -> None:
    """Raise :class:`InvalidArgumentError` for impossible replication/quorum pairs."""
    if not isinstance(replication, int) or replication < 1:
        raise InvalidArgumentError(f"replication must be an integer >= 1, got {replication!r}")
    if quorum is None:
        return
    if not isinstance(quorum, int) or quorum < 1:
        raise InvalidArgumentError(f"quorum must be an integer >= 1, got {quorum!r}")
    if quorum > replication:
        raise InvalidArgumentError(
            f"quorum ({quorum}) cannot be greater than replication ({replication})"
        )
