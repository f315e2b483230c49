"""Node configuration: every tunable in one place, each documented."""

from __future__ import annotations

from dataclasses import dataclass, field

from peer_ring.core._errors import InvalidArgumentError
from peer_ring.core._ring import DEFAULT_PARTITIONS
from peer_ring.core.transport._base import TransportLimits
from peer_ring.core.transport._tls import TLSConfig


@dataclass(frozen=True, slots=True)
class PeerRingConfig:
    """Settings of one :class:`~peer_ring.core.PeerRing` node.

    Attributes:
        partitions: fixed number of partitions P; every member must agree.
        replication: default number of replicas N per key (per-call override). Data
            movement (initial sync, rebalancing, handoff, anti-entropy) keeps this many
            copies of every partition.
        quorum: default number of successful replies W/R needed; ``None`` means a
            majority of ``replication`` (N // 2 + 1).
        request_timeout: default seconds a replicated operation may take.
        transport_limits: message size, in-flight and reconnect bounds of the transport.
        token: shared secret peers must present (None disables the check).
        tls: mutual TLS between peers (CA, certificate and key files, re-read when they
            change); None means plaintext gRPC. See docs/security.md.
        suspicion_timeout: seconds a peer stays suspected after the last failure report
            (a failed request or probe), unless it answers again sooner.
        transfer_timeout: seconds to wait for each chunk of a partition transfer.
        down_after: seconds a peer must stay suspected without interruption before it is
            removed from this node's ring, so that the remaining nodes re-replicate its
            partitions (Dynamo §4.8 keeps failures out of the ring; a static member list
            never shrinks on its own, so without this a dead node would keep a third of
            the copies missing forever). ``None`` disables: only discovery changes the
            ring, and sloppy quorum + hinted handoff cover failures.
        probe_interval: seconds between two liveness probes (an internal ping) of every
            discovered peer; probes are what notices that a peer answers again.
        probe_timeout: seconds a probe may take before it counts as a failure.
        max_clock_offset: seconds the wall clocks of two nodes may differ before the
            wall-clock stamps of applications (expiry times, tombstone grace) become
            noticeably wrong for the others. Each probe answer carries the
            peer's wall clock; the estimated offsets are in ``sync_status()["clock"]``
            and metrics, and past half this bound a warning is logged (once a minute per
            peer). Nothing is refused: it is an alarm, not an enforcement.
        sync_concurrency: partitions pulled at the same time (each pull is one bulk
            transfer stream per source).
        sync_batch: partitions whose digests are asked in one request.
        sync_retry_initial / sync_retry_max: backoff between attempts to pull a partition
            that no complete replica could serve yet (doubling, capped).
        sync_give_up_after: seconds after which a partition that still could not be pulled
            from a complete replica is declared synced anyway (logged as a warning); it
            bounds how long ``ready`` can stay false while other replicas are unreachable.
        handoff_delay: seconds a node waits after losing a partition before handing it off,
            so that every peer has seen the same ring change first.
        handoff_retention: seconds a lost partition is kept at most when its new replicas
            never confirm the handoff; it is then dropped with a warning.
        handoff_timeout: seconds a handoff or leave request may take (the receiver pulls
            while the sender waits).
        hint_max / hint_max_bytes: bound of the hinted-handoff store (hints and bytes);
            a substitute that is full refuses the hinted write.
        hint_ttl: seconds a hint is kept while its target stays unreachable; then dropped.
        hint_batch: hints sent to one target at a time when it is reachable again.
        anti_entropy_interval: mean seconds between two anti-entropy rounds (jittered
            +-20%); ``None`` disables anti-entropy.
        anti_entropy_batch: partitions compared per round (bounds the work of a round).
        leave_deadline: default seconds ``PeerRing.leave`` waits for the handoff.
        transport: the default transport a node builds when none is given: ``"grpc"``
            (default, the interoperable wire contract) or ``"tcp"`` (the same frames over
            plain TCP/TLS, cheaper per request; see the core README). Every node of a
            cluster must use the same one: a peer of the other kind is refused.
        read_fanout: which replicas a reading command (``reads=True`` and not
            ``mutates``) is sent to. ``"quorum"`` (default) asks only ``quorum`` of the
            key's replicas at first (this node first when it is one, then the others in
            preference order, suspected ones last) and asks the next replica at once when
            one refuses or fails, or after ``read_speculate_after`` when one is slow.
            ``"all"`` sends every read to all N replicas and returns at the quorum (more
            read repair, N/R times the read traffic). Either way the read intersects
            every write quorum when R + W > N (docs/consistency.md). Writes always go to
            all N.
        read_speculate_after: seconds a quorum read waits for its replicas before it
            asks one more (a speculative request, so that one slow replica does not set
            the read's latency); ``None`` never speculates (a slow replica then costs up
            to ``request_timeout``). Speculation can at most restore the ``"all"``
            fan-out's traffic.
    """

    partitions: int = DEFAULT_PARTITIONS
    replication: int = 3
    quorum: int | None = None
    request_timeout: float = 2.0
    transport_limits: TransportLimits = field(default_factory=TransportLimits)
    token: str | None = None
    tls: TLSConfig | None = None
    suspicion_timeout: float = 5.0
    transfer_timeout: float = 10.0
    down_after: float | None = 10.0
    probe_interval: float = 1.0
    probe_timeout: float = 1.0
    max_clock_offset: float = 0.5
    sync_concurrency: int = 4
    sync_batch: int = 1024
    sync_retry_initial: float = 0.5
    sync_retry_max: float = 5.0
    sync_give_up_after: float = 60.0
    handoff_delay: float = 2.0
    handoff_retention: float = 600.0
    handoff_timeout: float = 30.0
    hint_max: int = 100_000
    hint_max_bytes: int = 64 * 1024 * 1024
    hint_ttl: float = 3600.0
    hint_batch: int = 64
    anti_entropy_interval: float | None = 30.0
    anti_entropy_batch: int = 256
    leave_deadline: float = 30.0
    transport: str = "grpc"
    read_fanout: str = "quorum"
    read_speculate_after: float | None = 0.05

    def __post_init__(self) -> None:
        if self.read_fanout not in ("quorum", "all"):
            raise InvalidArgumentError(
                f"read_fanout must be 'quorum' or 'all', got {self.read_fanout!r}"
            )
        if self.transport not in ("grpc", "tcp"):
            raise InvalidArgumentError(f"transport must be 'grpc' or 'tcp', got {self.transport!r}")
        if self.partitions < 1:
            raise InvalidArgumentError(f"partitions must be >= 1, got {self.partitions}")
        check_replication(self.replication, self.quorum)
        positive = {
            "request_timeout": self.request_timeout,
            "suspicion_timeout": self.suspicion_timeout,
            "transfer_timeout": self.transfer_timeout,
            "probe_interval": self.probe_interval,
            "probe_timeout": self.probe_timeout,
            "max_clock_offset": self.max_clock_offset,
            "sync_retry_initial": self.sync_retry_initial,
            "sync_retry_max": self.sync_retry_max,
            "handoff_timeout": self.handoff_timeout,
            "hint_ttl": self.hint_ttl,
            "leave_deadline": self.leave_deadline,
            "down_after": self.down_after if self.down_after is not None else 1.0,
            "read_speculate_after": (
                self.read_speculate_after if self.read_speculate_after is not None else 1.0
            ),
            "anti_entropy_interval": (
                self.anti_entropy_interval if self.anti_entropy_interval is not None else 1.0
            ),
        }
        for name, value in positive.items():
            if not value > 0:
                raise InvalidArgumentError(f"{name} must be > 0, got {value}")
        at_least_one = {
            "sync_concurrency": self.sync_concurrency,
            "sync_batch": self.sync_batch,
            "hint_max": self.hint_max,
            "hint_max_bytes": self.hint_max_bytes,
            "hint_batch": self.hint_batch,
            "anti_entropy_batch": self.anti_entropy_batch,
        }
        for name, count in at_least_one.items():
            if not isinstance(count, int) or count < 1:
                raise InvalidArgumentError(f"{name} must be an integer >= 1, got {count!r}")
        for name, value in (
            ("sync_give_up_after", self.sync_give_up_after),
            ("handoff_delay", self.handoff_delay),
            ("handoff_retention", self.handoff_retention),
        ):
            if not value >= 0:
                raise InvalidArgumentError(f"{name} must be >= 0, got {value}")

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
