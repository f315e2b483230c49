"""Many pure ``Swim`` state machines on one virtual clock and one in-memory network.

Nothing sleeps: a heap of timed events (packet deliveries, stream replies, node timers) is
run in order, so a 200-node, 10-minute scenario takes seconds of CPU and the same seed always
gives the same run. Packets go through the real :class:`PacketCodec` (framing, CRC or
AES-GCM, size limits), so byte counts are the ones a real node would send.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from peer_ring.discovery.gossip._codec import encode
from peer_ring.discovery.gossip._config import GossipConfig
from peer_ring.discovery.gossip._keyring import Keyring
from peer_ring.discovery.gossip._membership import initial_incarnation
from peer_ring.discovery.gossip._messages import Ack, Address, Ping, PushPull
from peer_ring.discovery.gossip._outputs import MemberEvent, OpenStream, SendPacket, StreamPing
from peer_ring.discovery.gossip._packet import BadPacketError, PacketCodec
from peer_ring.discovery.gossip._protocol import Swim
from peer_ring.discovery.gossip.testing._network import SimNetwork

#: Virtual wall clock at time 0 (only the incarnation numbers see it).
EPOCH = 1_800_000_000.0
#: IP + UDP header bytes added to each datagram in the traffic counters.
UDP_HEADER = 28
#: TCP segments counted for one push-pull exchange (handshake, two data, acks, close).
TCP_SEGMENTS_PER_EXCHANGE = 10
#: IP + TCP header bytes per segment in the traffic counters.
TCP_HEADER = 52


@dataclass(slots=True)
class SimNode:
    """One simulated member: its state machine and its counters."""

    name: str
    addr: Address
    swim: Swim
    codec: PacketCodec
    up: bool = True
    #: Largest random delay added to each event this node handles (CPU starvation).
    lag: float = 0.0
    wake_token: int = 0
    packets_sent: int = 0
    bytes_sent: int = 0
    streams_opened: int = 0
    bad_packets: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class SimEvent:
    """``observer`` saw ``event`` at virtual time ``time``."""

    time: float
    observer: str
    event: MemberEvent


class Simulation:
    """A cluster of simulated gossip nodes.

    Args:
        seed: seeds every random choice (network and nodes).
        config: protocol settings of every node.
        loss: UDP loss probability of the network.
        min_delay: smallest one-way network delay.
        max_delay: largest one-way network delay.
        keyring_factory: when given, each node encrypts with the keyring it returns.
    """

    def __init__(
        self,
        seed: int = 0,
        config: GossipConfig | None = None,
        *,
        loss: float = 0.0,
        min_delay: float = 0.0005,
        max_delay: float = 0.002,
        keyring_factory: Callable[[str], Keyring] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config or GossipConfig.lan()
        self.network = SimNetwork(
            random.Random(self.rng.random()), loss=loss, min_delay=min_delay, max_delay=max_delay
        )
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.by_addr: dict[Address, SimNode] = {}
        self.events: list[SimEvent] = []
        self._keyring_factory = keyring_factory
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self._streams = 0

    # ---- building the cluster -------------------------------------------------------------

    @staticmethod
    def name_of(index: int) -> str:
        """The peer-ring address used as the name of node ``index``."""
        return f"10.0.{index // 250}.{index % 250 + 1}:7101"

    @staticmethod
    def addr_of(index: int) -> Address:
        """The gossip address of node ``index``."""
        return (f"10.0.{index // 250}.{index % 250 + 1}", 7946)

    def add_node(
        self,
        index: int,
        *,
        seeds: list[Address] | None = None,
        meta: Mapping[str, str] | None = None,
        config: GossipConfig | None = None,
    ) -> SimNode:
        """Start node ``index`` (a restart when it existed), joining through ``seeds``."""
        name, addr = self.name_of(index), self.addr_of(index)
        cfg = config or self.config
        keyring = self._keyring_factory(name) if self._keyring_factory else None
        codec = PacketCodec(cfg.cluster, keyring, cfg.max_packet_size)
        swim = Swim(
            name,
            addr,
            config=cfg,
            now=self.now,
            rng=random.Random(self.rng.random()),
            incarnation=initial_incarnation(EPOCH + self.now),
            meta=meta,
            seeds=list(seeds or []),
            packet_overhead=codec.overhead(),
        )
        old = self.nodes.get(name)
        node = SimNode(name, addr, swim, codec)
        if old is not None:
            node.lag = old.lag
            node.wake_token = old.wake_token + 1
        self.nodes[name] = node
        self.by_addr[addr] = node
        self._after(node)
        return node

    def add_cluster(
        self, count: int, settle: float = 5.0, *, formed: bool = False
    ) -> list[SimNode]:
        """Start nodes ``0..count-1``, each joining through node 0, then run ``settle`` s.

        With ``formed``, every node starts already knowing every other one (as after a
        completed join, with nothing left to gossip), which skips the CPU cost of simulating
        ``count`` joins when a scenario is about what happens later.
        """
        first = self.add_node(0)
        nodes = [first]
        for i in range(1, count):
            nodes.append(self.add_node(i, seeds=[] if formed else [first.addr]))
        if formed:
            records = tuple(n.swim.me.record() for n in nodes)
            for node in nodes:
                node.swim.merge(self.now, records)
                node.swim.broadcasts.clear()
                node.swim.events.clear()
                node.swim.take_outputs()
                self._after(node)  # its timers changed: wake it at the new first deadline
        self.run_for(settle)
        return nodes

    # ---- faults -----------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """Stop a node abruptly (kill -9): it sends and answers nothing more."""
        node = self.nodes[name]
        node.up = False
        node.swim.stop()
        node.wake_token += 1

    def leave(self, name: str) -> None:
        """Make a node leave gracefully (it keeps running until :meth:`kill`)."""
        node = self.nodes[name]
        node.swim.leave(self.now)
        self._after(node)

    def starve(self, name: str, max_lag: float) -> None:
        """Delay every event ``name`` handles (timers and packets) by up to ``max_lag`` s."""
        self.nodes[name].lag = max_lag

    def inject(self, addr: Address, data: bytes, src: Address = ("10.9.9.9", 1)) -> None:
        """Deliver raw bytes to the node at ``addr`` now (for bad-packet tests)."""
        self._push(self.now, "udp", (addr, src, data))

    # ---- observation ------------------------------------------------------------------------

    def view(self, name: str) -> set[str]:
        """The live members (alive or suspect) in ``name``'s view."""
        return {s.name for s in self.nodes[name].swim.live_members()}

    def up_nodes(self) -> list[SimNode]:
        """Nodes still running."""
        return [n for n in self.nodes.values() if n.up]

    def converged(self) -> bool:
        """Whether every running node's view is exactly the set of running nodes."""
        expected = {n.name for n in self.up_nodes() if not n.swim.left}
        return all(self.view(n.name) == expected for n in self.up_nodes() if not n.swim.left)

    # ---- running ------------------------------------------------------------------------------

    def run_for(self, seconds: float) -> None:
        """Advance virtual time by ``seconds``."""
        self.run_until(self.now + seconds)

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run every event up to time ``t``; with ``stop``, return early (True) once it holds
        (checked after each event)."""
        heap = self._heap
        while heap and heap[0][0] <= t:
            at, _, kind, payload = heapq.heappop(heap)
            self.now = at
            self._dispatch(kind, payload)
            if stop is not None and stop():
                return True
        self.now = max(self.now, t)
        return False

    def _push(self, at: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    def _lag(self, node: SimNode) -> float:
        return self.rng.uniform(0.0, node.lag) if node.lag else 0.0

    def _after(self, node: SimNode) -> None:
        """Ship a node's outputs and events, and schedule its next timer."""
        swim = node.swim
        if swim.events:
            for event in swim.events:
                self.events.append(SimEvent(self.now, node.name, event))
            swim.events.clear()
        for out in swim.take_outputs():
            if not node.up:
                continue
            if isinstance(out, SendPacket):
                data = node.codec.pack(list(out.messages))
                node.packets_sent += 1
                node.bytes_sent += len(data) + UDP_HEADER
                delay = self.network.udp_fate(node.addr, out.to)
                if delay is not None:
                    self._push(self.now + delay, "udp", (out.to, node.addr, data))
            elif isinstance(out, OpenStream):
                node.streams_opened += 1
                self._start_stream(node, out)
            elif isinstance(out, StreamPing):
                self._start_stream_ping(node, out)
        deadline = swim.next_deadline()
        if deadline is not None and node.up:
            node.wake_token += 1
            self._push(max(deadline, self.now) + self._lag(node), "wake", (node, node.wake_token))

    def _start_stream(self, node: SimNode, out: OpenStream) -> None:
        peer = self.by_addr.get(out.to)
        data = node.codec.pack([encode(out.message)])
        node.bytes_sent += len(data) + 4 + TCP_SEGMENTS_PER_EXCHANGE // 2 * TCP_HEADER
        node.packets_sent += TCP_SEGMENTS_PER_EXCHANGE // 2
        if peer is None or not peer.up or not self.network.reachable(node.addr, out.to):
            self._stream_failed(node, out)
            return
        delay = self.network.delay() + self._lag(peer)
        self._push(self.now + delay, "stream_serve", (node, node.swim, peer, out, data))

    def _stream_failed(self, node: SimNode, out: OpenStream) -> None:
        reply = (node, node.swim, out.id, None)
        self._push(self.now + self.config.stream_timeout, "stream_reply", reply)

    def _unpack_stream(self, node: SimNode, data: bytes) -> PushPull | None:
        msg = self._unpack_one(node, data)
        return msg if isinstance(msg, PushPull) else None

    def _unpack_one(self, node: SimNode, data: bytes) -> object:
        try:
            messages = node.codec.unpack(data)
        except BadPacketError as exc:
            node.bad_packets[exc.reason] += 1
            return None
        if len(messages) != 1:
            node.bad_packets["bad_message"] += 1
            return None
        return messages[0]

    def _start_stream_ping(self, node: SimNode, out: StreamPing) -> None:
        """The TCP fallback probe. TCP recovers lost data segments, but a lost SYN or SYN-ACK
        costs a 1 s retransmission timeout, longer than what is left of the probe: the
        handshake's two packets must get through (each subject to the UDP loss rate)."""
        data = node.codec.pack([encode(out.ping)])
        node.packets_sent += 3
        node.bytes_sent += len(data) + 4 + 3 * TCP_HEADER
        deadline = self.now + out.timeout
        peer = self.by_addr.get(out.to)
        net = self.network
        fate = net.tcp_segment_fate(node.addr, out.to), net.tcp_segment_fate(out.to, node.addr)
        if peer is None or not peer.up or None in fate:
            self._push(deadline, "ping_reply", (node, node.swim, out.ping.seq, False, deadline))
            return
        delay = sum(f for f in fate if f is not None) + self.network.delay() + self._lag(peer)
        self._push(self.now + delay, "ping_serve", (node, node.swim, peer, out, data, deadline))

    def _dispatch(self, kind: str, payload: Any) -> None:
        if kind == "wake":
            node, token = payload
            if node.up and token == node.wake_token:
                node.swim.tick(self.now)
                self._after(node)
        elif kind == "udp":
            dst, src, data = payload
            node = self.by_addr.get(dst)
            if node is None or not node.up:
                return
            if node.lag:
                self._push(self.now + self._lag(node), "udp_now", payload)
                return
            self._receive(node, src, data)
        elif kind == "udp_now":
            dst, src, data = payload
            node = self.by_addr.get(dst)
            if node is not None and node.up:
                self._receive(node, src, data)
        elif kind == "stream_serve":
            client, swim, peer, out, data = payload
            request = self._unpack_stream(peer, data) if peer.up else None
            if request is None:
                self._stream_failed(client, out)
                return
            reply = peer.swim.handle_stream(self.now, client.addr, request)
            assert reply is not None
            answer = peer.codec.pack([encode(reply)])
            peer.bytes_sent += len(answer) + 4 + TCP_SEGMENTS_PER_EXCHANGE // 2 * TCP_HEADER
            peer.packets_sent += TCP_SEGMENTS_PER_EXCHANGE // 2
            self._after(peer)
            delay = self.network.delay() + self._lag(client)
            self._push(self.now + delay, "stream_reply", (client, swim, out.id, answer))
        elif kind == "ping_serve":
            client, swim, peer, out, data, deadline = payload
            ping = self._unpack_one(peer, data) if peer.up else None
            ok = False
            if isinstance(ping, Ping):
                ok = isinstance(peer.swim.handle_stream(self.now, client.addr, ping), Ack)
                self._after(peer)
            at = self.now + self.network.delay() + self._lag(client) if ok else deadline
            self._push(at, "ping_reply", (client, swim, out.ping.seq, ok, deadline))
        elif kind == "ping_reply":
            client, swim, seq, ok, deadline = payload
            if client.up and client.swim is swim:
                swim.stream_ping_done(self.now, seq, ok and self.now <= deadline)
                self._after(client)
        elif kind == "stream_reply":
            client, swim, stream_id, answer = payload
            if client.up and client.swim is swim:
                reply = None if answer is None else self._unpack_stream(client, answer)
                swim.stream_done(self.now, stream_id, reply)
                self._after(client)

    def _receive(self, node: SimNode, src: Address, data: bytes) -> None:
        try:
            messages = node.codec.unpack(data)
        except BadPacketError as exc:
            node.bad_packets[exc.reason] += 1
            return
        node.swim.handle_packet(self.now, src, messages)
        self._after(node)


def push_pull_size(message: PushPull) -> int:
    """Encoded size of a push-pull message (for documentation and tests)."""
    return len(encode(message))
