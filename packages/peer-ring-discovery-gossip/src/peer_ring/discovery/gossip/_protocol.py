"""The SWIM + Lifeguard protocol as a pure, deterministic state machine.

No I/O and no clock of its own: the driver (the asyncio adapter, or the simulator of
``peer_ring.discovery.gossip.testing``) feeds it received messages and timer ticks with the
current time, and collects what it wants sent (:meth:`Swim.take_outputs`) and what changed
(:attr:`Swim.events`, :meth:`Swim.live_members`). With a seeded ``random.Random`` the same
inputs give the same outputs, which is what lets 200 nodes run in one process on virtual time.

Failure detection (SWIM): every ``probe_interval`` the node pings the next member of a shuffled
round-robin order. Without an ack within ``probe_timeout`` it asks ``indirect_checks`` random
members to ping the target for it; without any ack by the end of the interval it *suspects*
the target and gossips that. The suspect refutes (``_membership``); otherwise the suspicion
runs out and the member is declared dead.

Lifeguard: (1) helpers of an indirect probe answer ``nack`` when they reach nobody, and a
prober missing the nacks it expected (or accused itself) raises its local health score, which
stretches its probe interval and timeouts (``_awareness``); (2) suspicion timeouts start at
``suspicion_max_timeout_mult`` times the minimum and shrink with independent confirmations
(``_suspicion``); (3) a ping to a suspected member carries the suspicion itself (the buddy
system), so the member learns of it and refutes at once.

Dissemination: updates are queued (``_broadcasts``) and piggybacked on every packet sent, and
a gossip round every ``gossip_interval`` sends pending ones to ``gossip_nodes`` members;
leave, death and refutation start a round at once. Every ``push_pull_interval`` (scaled with
the cluster size) two members exchange their whole tables over TCP, which repairs anything
gossip missed and merges the two sides of a healed partition.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from peer_ring.discovery.gossip._codec import encode
from peer_ring.discovery.gossip._config import GossipConfig
from peer_ring.discovery.gossip._membership import MemberTable, NodeState
from peer_ring.discovery.gossip._messages import (
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    Message,
    Nack,
    Ping,
    PushPull,
    Status,
    Suspect,
)
from peer_ring.discovery.gossip._outputs import OpenStream, Output, SendPacket, StreamPing
from peer_ring.discovery.gossip._packet import PER_MESSAGE_OVERHEAD

logger = logging.getLogger(__name__)

_SEQ_MASK = 0xFFFFFFFF


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    acked: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    end: float = 0.0
    tcp_ok: bool = False


@dataclass(slots=True)
class _Forward:
    requester: Address
    seq: int
    nack: bool


class Swim(MemberTable):
    """One node's SWIM + Lifeguard state machine.

    Args:
        name: this node's name; for peer-ring, its peer (gRPC) ``host:port``.
        addr: this node's gossip ``(host, port)`` as other members should reach it.
        config: protocol settings.
        now: the current time (monotonic seconds; any origin).
        rng: the only source of randomness.
        incarnation: first incarnation, normally ``initial_incarnation(wall_clock)``.
        meta: this node's metadata (gossiped with it).
        seeds: gossip addresses to join through (this node's own address is skipped).
        packet_overhead: bytes each packet spends on framing (``PacketCodec.overhead()``),
            so piggybacked updates keep packets within ``config.udp_buffer_size``.
    """

    def __init__(
        self,
        name: str,
        addr: Address,
        *,
        config: GossipConfig,
        now: float,
        rng: random.Random,
        incarnation: int,
        meta: Mapping[str, str] | None = None,
        seeds: list[Address] | tuple[Address, ...] = (),
        packet_overhead: int = 64,
    ) -> None:
        super().__init__(name, addr, config, now, rng, incarnation, meta or {})
        self.seeds = tuple(s for s in seeds if s != addr)
        self._outputs: list[Output] = []
        self._packet_budget = config.udp_buffer_size - packet_overhead
        self._seq = rng.randrange(_SEQ_MASK)
        self._probe: _Probe | None = None
        self._forwards: dict[int, _Forward] = {}
        self._streams: dict[int, bool] = {}  # id -> is a join attempt
        self._stream_id = 0
        self.joined = not self.seeds
        self._probe_index = 0
        self._phased = False
        self._now = now
        self.stopped = False
        self.probes_sent = 0
        self.suspicions_raised = 0
        #: Probes that failed over UDP but succeeded over TCP (UDP blocked or lossy).
        self.tcp_rescues = 0
        #: Times a timer fired more than probe_timeout / 2 late (counted once per interval).
        self.late_timers = 0
        self._last_late = -1e18
        # Staggered first ticks, so nodes started together do not probe in lock-step.
        self.timers.set("probe", now + rng.random() * config.probe_interval)
        self.timers.set("push_pull", now + rng.random() * config.push_pull_interval)
        if self.seeds:
            self._join(now)

    # ---- driver interface ---------------------------------------------------------------

    def take_outputs(self) -> list[Output]:
        """What to send since the last call (and forget it)."""
        out, self._outputs = self._outputs, []
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work, or None."""
        return self.timers.next_deadline()

    def tick(self, now: float) -> None:
        """Run every timer due at ``now``."""
        while not self.stopped:
            due = self.timers.pop_due(now)
            if due is None:
                return
            key, at = due
            if now - at > self.config.probe_timeout / 2:
                self._late(now)
            self._fire(now, key)

    def _late(self, now: float) -> None:
        """A timer fired well after its deadline: this node misses its own deadlines (a
        starved CPU, a paused process). Lifeguard's health score goes up, at most once per
        probe interval, so that the node probes more slowly instead of accusing others of
        its own slowness (the issue's "a node that misses its own deadlines probes more
        slowly"; memberlist infers it from missed nacks and refutations only)."""
        if now - self._last_late >= self.config.probe_interval:
            self._last_late = now
            self.late_timers += 1
            self.awareness.apply(1)

    def handle_packet(self, now: float, src: Address, messages: list[Message]) -> None:
        """Process the messages of one UDP packet received from ``src``."""
        if self.stopped:
            return
        for msg in messages:
            self._handle(now, src, msg)

    def handle_stream(
        self, now: float, src: Address, msg: PushPull | Ping
    ) -> PushPull | Ack | None:
        """Serve one TCP request: a push-pull (merge the peer's table and return ours, taken
        first) or a fallback ping (the ack, when it names this node; else None)."""
        if isinstance(msg, Ping):
            return Ack(msg.seq) if msg.target == self.name and not self.stopped else None
        reply = self.push_pull_message(join=False)
        if not self.stopped:
            self.merge(now, msg.members)
            self.joined = True
        return reply

    def stream_done(self, now: float, stream_id: int, reply: PushPull | None) -> None:
        """The push-pull ``stream_id`` got ``reply`` (None: it failed)."""
        join = self._streams.pop(stream_id, None)
        if join is None or self.stopped:
            return
        if reply is not None:
            self.merge(now, reply.members)
            self.joined = True
        elif join and not self.joined and not any(self._streams.values()):
            self.timers.set("join", now + self.config.join_retry_interval)

    def stream_ping_done(self, now: float, seq: int, ok: bool) -> None:
        """The TCP fallback ping of probe ``seq`` was answered (``ok``) or not."""
        probe = self._probe
        if ok and probe is not None and probe.seq == seq and not self.stopped:
            probe.tcp_ok = True

    def leave(self, now: float) -> None:
        """Announce that this node leaves (gossiped at once); it stops probing."""
        if self.left:
            return
        self.left = True
        self.timers.cancel("probe")
        self.timers.cancel("push_pull")
        self.timers.cancel("join")
        me = self.me
        self.on_dead(now, Dead(self.name, me.incarnation, self.name))

    def leave_sent(self) -> bool:
        """Whether the leave announcement has been sent as often as gossip sends updates."""
        return self.broadcasts.pending(self.name) is None

    def stop(self) -> None:
        """Stop doing anything (the driver shuts down)."""
        self.stopped = True

    def update_meta(self, now: float, meta: Mapping[str, str]) -> None:
        """Change this node's metadata and gossip it."""
        me = self.me
        me.meta = MappingProxyType(dict(meta))
        me.incarnation += 1
        self.version += 1
        self._queue(now, self.name, self.alive_message(), urgent=True)

    def push_pull_message(self, join: bool) -> PushPull:
        """This node's whole table, as sent in a push-pull."""
        return PushPull(join, tuple(s.record() for s in self.nodes.values()))

    # ---- timers -----------------------------------------------------------------------

    def _fire(self, now: float, key: object) -> None:
        if key == "probe":
            self._probe_tick(now)
        elif key == "gossip":
            self._gossip_tick(now)
        elif key == "push_pull":
            self._push_pull_tick(now)
        elif key == "join":
            if not self.joined:
                self._join(now)
        elif isinstance(key, tuple):
            kind, ident = key
            if kind == "probe_timeout":
                self._probe_timeout(now, ident)
            elif kind == "probe_end":
                self._probe_end(now, ident)
            elif kind == "forward":
                self._forward_expired(ident)
            elif kind == "suspicion":
                self.suspicion_expired(now, ident)

    def _gossip_soon(self, now: float, urgent: bool) -> None:
        when = now if urgent else now + self.config.gossip_interval
        current = self.timers.when("gossip")
        if current is None or when < current:
            self.timers.set("gossip", when)

    # ---- probing ------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & _SEQ_MASK
        return self._seq

    def _next_target(self) -> NodeState | None:
        order = self.probe_order
        if not self._phased and len(order) > 2:
            # Start the first round at a random point of the order: members started together
            # would otherwise run their rounds in lock-step, and a member that failed late
            # in a round would wait for the next round of nearly everyone to be probed
            # (seen as 8 s first-detection tails in the 100-member simulation).
            self._phased = True
            self._probe_index = self.rng.randrange(len(order))
        for _ in range(len(order) + 1):
            if self._probe_index >= len(order):
                self.reap(self._now)
                order = self.probe_order
                self.rng.shuffle(order)
                self._probe_index = 0
                if not order:
                    return None
            name = order[self._probe_index]
            self._probe_index += 1
            state = self.nodes.get(name)
            if (
                state is not None
                and name != self.name
                and state.status
                in (
                    Status.ALIVE,
                    Status.SUSPECT,
                )
            ):
                return state
        return None

    def _probe_tick(self, now: float) -> None:
        if self._probe is not None:
            self._probe_end(now, self._probe.seq)
        interval = self.awareness.scale(self.config.probe_interval)
        self.timers.set("probe", now + interval)
        self._now = now
        target = self._next_target()
        if target is None:
            return
        seq = self._next_seq()
        self._probe = _Probe(seq, target.name, end=now + interval)
        self.probes_sent += 1
        msgs: list[Message] = [Ping(seq, target.name)]
        if target.status == Status.SUSPECT and self.config.lifeguard:
            # Buddy system: tell the suspect directly, so it can refute at once.
            msgs.append(Suspect(target.name, target.incarnation, self.name))
        self._send(target.addr, msgs)
        timeout = self.awareness.scale(self.config.probe_timeout)
        self.timers.set(("probe_timeout", seq), now + timeout)
        self.timers.set(("probe_end", seq), now + interval)

    def _probe_timeout(self, now: float, seq: int) -> None:
        probe = self._probe
        if probe is None or probe.seq != seq or probe.acked:
            return
        target = self.nodes.get(probe.target)
        if target is None:
            return
        helpers = self._random_members(
            self.config.indirect_checks,
            lambda s: s.status == Status.ALIVE and s.name not in (self.name, probe.target),
        )
        nack = self.config.lifeguard
        for helper in helpers:
            self._send(helper.addr, [IndirectPing(seq, target.name, target.addr, nack)])
        probe.expected_nacks = len(helpers) if nack else 0
        if self.config.tcp_fallback and probe.end > now:
            ping = Ping(seq, target.name)
            self._outputs.append(StreamPing(target.addr, ping, probe.end - now))

    def _probe_end(self, now: float, seq: int) -> None:
        probe = self._probe
        if probe is None or probe.seq != seq:
            return
        self._probe = None
        self.timers.cancel(("probe_timeout", seq))
        self.timers.cancel(("probe_end", seq))
        if probe.acked:
            return
        missed_nacks = max(0, probe.expected_nacks - probe.nacks)
        if probe.tcp_ok:
            # memberlist's verdict too: reachable, so not suspected. Counted, and logged at
            # debug only: under plain packet loss this happens every few probes. Unlike
            # memberlist, missed nacks still count against this node's health: they say the
            # slowness is likely here (a starved node's acks wait in its own queue).
            self.tcp_rescues += 1
            self.awareness.apply(missed_nacks)
            logger.debug("%s answered over TCP but not over UDP", probe.target)
            return
        self.awareness.apply(missed_nacks if probe.expected_nacks > 0 else 1)
        target = self.nodes.get(probe.target)
        if target is None or target.status not in (Status.ALIVE, Status.SUSPECT):
            return
        logger.debug("no ack from %s: suspecting it", target.name)
        if target.status == Status.ALIVE:
            self.suspicions_raised += 1
        self.on_suspect(now, Suspect(target.name, target.incarnation, self.name))

    def _on_ack(self, now: float, seq: int) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq:
            if not probe.acked:
                probe.acked = True
                self.awareness.apply(-1)
            return
        forward = self._forwards.pop(seq, None)
        if forward is not None:
            self.timers.cancel(("forward", seq))
            self._send(forward.requester, [Ack(forward.seq)])

    def _forward_expired(self, seq: int) -> None:
        forward = self._forwards.pop(seq, None)
        if forward is not None and forward.nack:
            self._send(forward.requester, [Nack(forward.seq)])

    # ---- messages -----------------------------------------------------------------------

    def _handle(self, now: float, src: Address, msg: Message) -> None:
        if isinstance(msg, Ping):
            if msg.target == self.name:
                self._send(src, [Ack(msg.seq)])
        elif isinstance(msg, Ack):
            self._on_ack(now, msg.seq)
        elif isinstance(msg, Alive):
            self.on_alive(now, msg)
        elif isinstance(msg, Suspect):
            self.on_suspect(now, msg)
        elif isinstance(msg, Dead):
            self.on_dead(now, msg)
        elif isinstance(msg, IndirectPing):
            seq = self._next_seq()
            self._forwards[seq] = _Forward(src, msg.seq, msg.nack)
            self.timers.set(("forward", seq), now + self.config.probe_timeout)
            self._send(msg.target_addr, [Ping(seq, msg.target)])
        elif isinstance(msg, Nack):
            probe = self._probe
            if probe is not None and probe.seq == msg.seq:
                probe.nacks += 1
        # A PushPull never arrives over UDP; ignore it if one does.

    def _send(self, to: Address, msgs: list[Message]) -> None:
        encoded = [encode(m) for m in msgs]
        used = sum(len(e) + PER_MESSAGE_OVERHEAD for e in encoded)
        limit = self.config.retransmit_limit(self.live)
        extra = self.broadcasts.take(self._packet_budget - used, PER_MESSAGE_OVERHEAD, limit)
        self._outputs.append(SendPacket(to, tuple(encoded + extra)))

    # ---- gossip and push-pull -------------------------------------------------------------

    def _random_members(self, k: int, accept: Callable[[NodeState], bool]) -> list[NodeState]:
        """Up to ``k`` distinct random members passing ``accept`` (memberlist's kRandomNodes)."""
        order = self.probe_order
        n = len(order)
        chosen: list[NodeState] = []
        seen: set[str] = set()
        tries: Iterable[str]
        if n < 3 * k:
            names = list(order)
            self.rng.shuffle(names)
            tries = names
        else:
            rand = self.rng.random
            tries = (order[int(rand() * n)] for _ in range(3 * n))
        for name in tries:
            if len(chosen) >= k:
                break
            if name in seen:
                continue
            seen.add(name)
            state = self.nodes.get(name)
            if state is not None and accept(state):
                chosen.append(state)
        return chosen

    def _gossip_tick(self, now: float) -> None:
        if not self.broadcasts:
            return
        horizon = now - self.config.gossip_to_the_dead_time
        targets = self._random_members(
            self.config.gossip_nodes,
            lambda s: (
                s.name != self.name
                and (
                    s.status in (Status.ALIVE, Status.SUSPECT)
                    or (s.status == Status.DEAD and s.changed_at > horizon)
                )
            ),
        )
        limit = self.config.retransmit_limit(self.live)
        for target in targets:
            msgs = self.broadcasts.take(self._packet_budget, PER_MESSAGE_OVERHEAD, limit)
            if not msgs:
                break
            self._outputs.append(SendPacket(target.addr, tuple(msgs)))
        if self.broadcasts:
            self.timers.set("gossip", now + self.config.gossip_interval)

    def _open_stream(self, to: Address, join: bool) -> None:
        self._stream_id += 1
        self._streams[self._stream_id] = join
        self._outputs.append(OpenStream(self._stream_id, to, self.push_pull_message(join)))

    def _join(self, now: float) -> None:
        for seed in self.seeds:
            self._open_stream(seed, join=True)

    def _push_pull_tick(self, now: float) -> None:
        self.timers.set("push_pull", now + self.config.push_pull_period(self.live))
        peers = self._random_members(1, lambda s: s.status == Status.ALIVE and s.name != self.name)
        if peers:
            self._open_stream(peers[0].addr, join=False)
        # Seeds not among the live members may be the other side of a healed partition (or
        # restarted): exchanging state with one of them merges the two views again.
        known = {s.addr for s in self.nodes.values() if s.status in (Status.ALIVE, Status.SUSPECT)}
        strangers = [s for s in self.seeds if s not in known]
        if strangers:
            self._open_stream(self.rng.choice(strangers), join=not self.joined)
