"""Protocol settings, with named presets in the spirit of memberlist's DefaultLANConfig."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from peer_ring.core import InvalidArgumentError


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timing and size settings of the SWIM + Lifeguard protocol.

    Start from a preset (:meth:`lan`, the default; :meth:`local`; :meth:`wan`) and change
    fields with :meth:`with_options` or :func:`dataclasses.replace`. Times are seconds.

    Attributes:
        cluster: cluster name carried in every packet; packets of another cluster are dropped
            and counted, so two clusters sharing a network never merge.
        probe_interval: one failure-detection probe per node every this many seconds
            (scaled up by the local health multiplier when this node is unhealthy).
        probe_timeout: how long the direct ping waits for its ack before asking
            ``indirect_checks`` other members to probe (scaled like ``probe_interval``).
        indirect_checks: members asked to probe a target that missed a direct ping.
        retransmit_mult: each node sends each update ``ceil(retransmit_mult * ln(n+1))``
            times (piggybacked on probes, or by the gossip timer). memberlist uses
            ``log10``, which lets about ``n * e**-(mult * ceil(log10 n))`` members miss an update
            until the next push-pull (3 % of 100-node leaves in our simulation); the natural
            logarithm makes that ``n**(1 - mult)``.
        suspicion_mult: a suspected member is declared dead after at least
            ``suspicion_mult * max(1, log10(n)) * probe_interval`` seconds...
        suspicion_max_timeout_mult: ...and at most that times this factor: the timeout
            starts at the maximum and shrinks as independent confirmations arrive (Lifeguard).
        gossip_interval: a gossip round every this many seconds, only when updates are pending
            (an idle cluster sends no gossip packets).
        gossip_nodes: members each gossip round sends pending updates to.
        gossip_to_the_dead_time: dead members keep receiving gossip (so that they learn
            they were declared dead and refute) and keep their tombstone this long.
        push_pull_interval: a full-state exchange over TCP with one random member every this
            many seconds (scaled by ``ceil(log2(n) - 5) + 1`` above 32 members).
        stream_timeout: deadline of one TCP push-pull exchange.
        awareness_max_multiplier: Lifeguard local health: probe interval and timeouts are
            multiplied by up to this when this node misses its own deadlines.
        lifeguard: turn the three Lifeguard mechanisms on (default) or off (plain SWIM:
            fixed timeouts, fixed suspicion timeout, no nacks, no buddy system); for
            comparison and tests.
        udp_buffer_size: largest UDP packet sent; piggybacked updates fill it up to this.
        max_packet_size: larger inbound UDP packets are dropped (``too_large``).
        max_stream_size: larger inbound TCP push-pull messages are dropped.
        urgent_gossip: leave, death, join and refutation updates start a gossip round at
            once instead of waiting for the next tick.
        tcp_fallback: when a direct ping gets no ack in time, also ping the target over TCP
            (memberlist's fallback): a member reachable over TCP is not suspected, so a
            network that drops UDP (or much of it) does not make it look dead.
        join_retry_interval: while no seed answered, retry joining them this often.
    """

    cluster: str = "peer-ring"
    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    retransmit_mult: int = 4
    suspicion_mult: int = 3
    suspicion_max_timeout_mult: int = 6
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_time: float = 30.0
    push_pull_interval: float = 30.0
    stream_timeout: float = 10.0
    awareness_max_multiplier: int = 8
    lifeguard: bool = True
    udp_buffer_size: int = 1400
    max_packet_size: int = 65_507
    max_stream_size: int = 8 * 1024 * 1024
    urgent_gossip: bool = True
    tcp_fallback: bool = True
    join_retry_interval: float = 2.0

    def __post_init__(self) -> None:
        positive = (
            "probe_interval",
            "probe_timeout",
            "gossip_interval",
            "gossip_to_the_dead_time",
            "push_pull_interval",
            "stream_timeout",
            "join_retry_interval",
        )
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidArgumentError(f"{name} must be a positive number, got {value!r}")
        at_least_one = (
            "indirect_checks",
            "retransmit_mult",
            "suspicion_mult",
            "suspicion_max_timeout_mult",
            "gossip_nodes",
            "awareness_max_multiplier",
        )
        for name in at_least_one:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}")
        if self.probe_timeout > self.probe_interval:
            raise InvalidArgumentError("probe_timeout must not exceed probe_interval")
        if not 0 < len(self.cluster.encode()) < 256:
            raise InvalidArgumentError("cluster must be 1 to 255 bytes of UTF-8")
        if not 512 <= self.udp_buffer_size <= self.max_packet_size <= 65_507:
            raise InvalidArgumentError("need 512 <= udp_buffer_size <= max_packet_size <= 65507")

    @classmethod
    def lan(cls, **changes: object) -> GossipConfig:
        """Defaults for a LAN (memberlist's DefaultLANConfig): 1 s probes, 0.5 s timeout."""
        return replace(cls(), **changes)  # type: ignore[arg-type]

    @classmethod
    def local(cls, **changes: object) -> GossipConfig:
        """Loopback and tests (memberlist's DefaultLocalConfig): faster failure detection."""
        base = cls(
            indirect_checks=1,
            retransmit_mult=2,
            suspicion_mult=3,
            probe_timeout=0.2,
            gossip_interval=0.1,
            gossip_to_the_dead_time=15.0,
            push_pull_interval=15.0,
            stream_timeout=1.0,
            join_retry_interval=0.5,
        )
        return replace(base, **changes)  # type: ignore[arg-type]

    @classmethod
    def wan(cls, **changes: object) -> GossipConfig:
        """Across data centres (memberlist's DefaultWANConfig): slower, more tolerant."""
        base = cls(
            suspicion_mult=6,
            probe_interval=5.0,
            probe_timeout=3.0,
            gossip_nodes=4,
            gossip_interval=0.5,
            gossip_to_the_dead_time=60.0,
            push_pull_interval=60.0,
            stream_timeout=30.0,
        )
        return replace(base, **changes)  # type: ignore[arg-type]

    @classmethod
    def preset(cls, name: str, **changes: object) -> GossipConfig:
        """The preset called ``name`` (``lan``, ``local`` or ``wan``) with ``changes``.

        Raises:
            InvalidArgumentError: unknown preset.
        """
        factories = {"lan": cls.lan, "local": cls.local, "wan": cls.wan}
        if name not in factories:
            raise InvalidArgumentError(f"unknown preset {name!r}; use one of lan, local, wan")
        return factories[name](**changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Every setting's name."""
        return tuple(f.name for f in fields(cls))

    # ---- derived quantities, shared by the protocol and the documentation ----------------

    def retransmit_limit(self, n: int) -> int:
        """How many times one update is sent in a cluster of ``n`` members."""
        return max(1, math.ceil(self.retransmit_mult * math.log(n + 1)))

    def suspicion_timeouts(self, n: int) -> tuple[float, float]:
        """(minimum, maximum) suspicion timeout in a cluster of ``n`` members."""
        scale = max(1.0, math.log10(max(1.0, float(n))))
        low = self.suspicion_mult * scale * self.probe_interval
        return low, low * self.suspicion_max_timeout_mult

    def push_pull_period(self, n: int) -> float:
        """Seconds between two push-pull exchanges of one node, for ``n`` members."""
        if n <= 32:
            return self.push_pull_interval
        return self.push_pull_interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)
