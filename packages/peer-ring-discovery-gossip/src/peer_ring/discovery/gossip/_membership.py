"""The member table and SWIM's update rules: alive, suspect, dead, left, and refutation.

Rules (memberlist's ``aliveNode``/``suspectNode``/``deadNode``): an update about a member
applies only at an incarnation at least as new as the one known (``alive`` needs a strictly
newer one), so the member itself, which alone raises its incarnation, always has the last
word: accused of being suspect or dead at incarnation ``i`` it *refutes* by announcing
``alive`` at ``i + 1``. Every applied update is queued for gossip.

Identity and restarts: a node's first incarnation is taken from the wall clock (milliseconds
<< 20), so a process restarted under the same name starts *above* everything its
predecessor ever announced; its first ``alive`` beats the old ``dead`` or ``suspect`` state at
once, and nobody waits for the old state to be reaped.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from peer_ring.discovery.gossip._awareness import Awareness
from peer_ring.discovery.gossip._broadcasts import BroadcastQueue
from peer_ring.discovery.gossip._codec import encode
from peer_ring.discovery.gossip._config import GossipConfig
from peer_ring.discovery.gossip._messages import (
    Address,
    Alive,
    Dead,
    MemberRecord,
    Message,
    Status,
    Suspect,
)
from peer_ring.discovery.gossip._outputs import EventKind, MemberEvent
from peer_ring.discovery.gossip._suspicion import Suspicion
from peer_ring.discovery.gossip._timers import Timers

logger = logging.getLogger(__name__)

_LIVE = (Status.ALIVE, Status.SUSPECT)

#: Largest encoded metadata of one member (memberlist's MetaMaxSize): an announcement must
#: fit in one UDP packet with room for others.
MAX_METADATA_BYTES = 512


def metadata_size(meta: Mapping[str, str]) -> int:
    """Encoded size of ``meta``'s pairs."""
    return sum(4 + len(k.encode()) + len(v.encode()) for k, v in meta.items())


def initial_incarnation(wall_seconds: float) -> int:
    """A first incarnation above any a previous process of the same name can have used."""
    return (int(wall_seconds * 1000) & ((1 << 43) - 1)) << 20


@dataclass(slots=True)
class NodeState:
    """What this node knows about one member."""

    name: str
    addr: Address
    incarnation: int
    status: Status
    meta: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    changed_at: float = 0.0

    def record(self) -> MemberRecord:
        """This entry as sent in a push-pull exchange."""
        return MemberRecord(self.name, self.incarnation, self.addr, self.status, self.meta)


class MemberTable:
    """Members by name, the update rules, suspicion timers and the gossip queue.

    Args:
        name: this node's name (its peer-ring address).
        addr: this node's gossip address.
        config: protocol settings.
        now: the current time (monotonic seconds).
        rng: the only source of randomness (seed it for a deterministic run).
        incarnation: this node's first incarnation (see :func:`initial_incarnation`).
        meta: this node's metadata.
    """

    def __init__(
        self,
        name: str,
        addr: Address,
        config: GossipConfig,
        now: float,
        rng: random.Random,
        incarnation: int,
        meta: Mapping[str, str],
    ) -> None:
        self.name = name
        self.addr = addr
        self.config = config
        self.rng = rng
        self.timers = Timers()
        self.broadcasts = BroadcastQueue()
        self.awareness = Awareness(config.awareness_max_multiplier if config.lifeguard else 1)
        self.nodes: dict[str, NodeState] = {}
        self.probe_order: list[str] = []
        self.suspicions: dict[str, Suspicion] = {}
        self.events: list[MemberEvent] = []
        #: Bumped whenever the set of live members or one's metadata changes.
        self.version = 0
        self.live = 0
        self.left = False
        self.refutations = 0
        me = NodeState(name, addr, incarnation, Status.ALIVE, MappingProxyType(dict(meta)), now)
        self._insert(me)
        self._set_status(me, Status.ALIVE, now, initial=True)

    # ---- hooks the protocol provides --------------------------------------------------

    def _gossip_soon(self, now: float, urgent: bool) -> None:
        raise NotImplementedError

    # ---- helpers ----------------------------------------------------------------------

    @property
    def me(self) -> NodeState:
        """This node's own entry."""
        return self.nodes[self.name]

    def _insert(self, state: NodeState) -> None:
        self.nodes[state.name] = state
        # A random position in the probe order, so a new member is not always probed last.
        self.probe_order.insert(self.rng.randint(0, len(self.probe_order)), state.name)

    def _set_status(
        self, state: NodeState, status: Status, now: float, initial: bool = False
    ) -> None:
        was_live = not initial and state.status in _LIVE
        is_live = status in _LIVE
        state.status = status
        state.changed_at = now
        if was_live != is_live:
            self.live += 1 if is_live else -1
            self.version += 1

    def _queue(self, now: float, key: str, msg: Message, urgent: bool = False) -> None:
        self.broadcasts.queue(key, encode(msg), urgent=urgent)
        self._gossip_soon(now, urgent and self.config.urgent_gossip)

    def _event(self, kind: EventKind, state: NodeState, source: str = "") -> None:
        self.events.append(MemberEvent(kind, state.name, state.incarnation, source))

    def live_members(self) -> list[NodeState]:
        """Alive and suspected members, this node included."""
        return [s for s in self.nodes.values() if s.status in _LIVE]

    def alive_message(self) -> Alive:
        """This node's own ``alive`` announcement."""
        me = self.me
        return Alive(me.name, me.incarnation, me.addr, me.meta)

    # ---- update rules -----------------------------------------------------------------

    def on_alive(self, now: float, a: Alive) -> None:
        """Apply an ``alive`` update."""
        if a.name == self.name:
            me = self.me
            if self.left or a.incarnation < me.incarnation:
                return
            if a.incarnation == me.incarnation and a.addr == me.addr and a.meta == me.meta:
                return
            logger.warning(
                "refuting an alive message about this node (%s, incarnation %d, address %s)"
                "; is another process using the name?",
                a.name,
                a.incarnation,
                a.addr,
            )
            self.refute(now, a.incarnation)
            return
        if metadata_size(a.meta) > MAX_METADATA_BYTES:
            logger.warning("ignoring %s: its metadata exceeds %d bytes", a.name, MAX_METADATA_BYTES)
            return
        state = self.nodes.get(a.name)
        if state is None:
            state = NodeState(a.name, a.addr, -1, Status.DEAD, a.meta, now)
            self._insert(state)
        elif a.incarnation <= state.incarnation:
            return
        self._cancel_suspicion(a.name)
        old_status, old_meta, old_addr = state.status, state.meta, state.addr
        # A (re)join or a refutation changes views: spread it at once, like a death.
        self._queue(now, a.name, a, urgent=old_status != Status.ALIVE)
        state.incarnation = a.incarnation
        state.meta = a.meta
        state.addr = a.addr
        if old_status != Status.ALIVE:
            self._set_status(state, Status.ALIVE, now)
        if old_status in (Status.DEAD, Status.LEFT):
            self._event(EventKind.JOINED, state)
        elif old_status == Status.SUSPECT:
            self._event(EventKind.REFUTED, state)
        if old_status in _LIVE and (old_meta != a.meta or old_addr != a.addr):
            self.version += 1
            self._event(EventKind.UPDATED, state)

    def on_suspect(self, now: float, s: Suspect) -> None:
        """Apply a ``suspect`` update (or count it as a confirmation)."""
        state = self.nodes.get(s.name)
        if state is None or s.incarnation < state.incarnation:
            return
        suspicion = self.suspicions.get(s.name)
        if suspicion is not None:
            if suspicion.confirm(s.sender):
                self.timers.set(("suspicion", s.name), suspicion.deadline())
                self._queue(now, s.name, s)
            return
        if state.status != Status.ALIVE:
            return
        if s.name == self.name:
            self.refute(now, s.incarnation)
            return
        self._queue(now, s.name, s)
        state.incarnation = s.incarnation
        self._set_status(state, Status.SUSPECT, now)
        n = max(self.live, 1)
        low, high = self.config.suspicion_timeouts(n)
        k = self.config.suspicion_mult - 2
        if not self.config.lifeguard:
            k, high = 0, low
        if n - 2 < k:
            k = 0
        suspicion = Suspicion(s.sender, k, low, high, now)
        self.suspicions[s.name] = suspicion
        self.timers.set(("suspicion", s.name), suspicion.deadline())
        self._event(EventKind.SUSPECTED, state, s.sender)

    def on_dead(self, now: float, d: Dead) -> None:
        """Apply a ``dead`` update (a leave when the sender is the member itself)."""
        state = self.nodes.get(d.name)
        if state is None or d.incarnation < state.incarnation:
            return
        self._cancel_suspicion(d.name)
        if state.status in (Status.DEAD, Status.LEFT):
            return
        if d.name == self.name and not self.left:
            self.refute(now, d.incarnation)
            return
        self._queue(now, d.name, d, urgent=True)
        state.incarnation = d.incarnation
        left = d.sender == d.name
        self._set_status(state, Status.LEFT if left else Status.DEAD, now)
        self._event(EventKind.LEFT if left else EventKind.DIED, state, d.sender)

    def refute(self, now: float, accused: int) -> None:
        """Announce this node alive at an incarnation above ``accused``."""
        me = self.me
        me.incarnation = max(me.incarnation + 1, accused + 1)
        self.refutations += 1
        self.awareness.apply(1)
        self._queue(now, self.name, self.alive_message(), urgent=True)

    def suspicion_expired(self, now: float, name: str) -> None:
        """A suspicion ran out: declare the member dead."""
        suspicion = self.suspicions.get(name)
        state = self.nodes.get(name)
        if suspicion is None or state is None or state.status != Status.SUSPECT:
            return
        logger.info(
            "declaring %s dead: suspected for %.1f s with %d confirmation(s)",
            name,
            now - suspicion.start,
            suspicion.confirmations,
        )
        self.on_dead(now, Dead(name, state.incarnation, self.name))

    def _cancel_suspicion(self, name: str) -> None:
        if self.suspicions.pop(name, None) is not None:
            self.timers.cancel(("suspicion", name))

    def merge(self, now: float, records: tuple[MemberRecord, ...]) -> None:
        """Apply a peer's full state (push-pull). A remote ``dead`` becomes a local
        suspicion, as in memberlist: this node gives the member its own chance to refute."""
        for r in records:
            if r.status == Status.ALIVE:
                self.on_alive(now, Alive(r.name, r.incarnation, r.addr, r.meta))
            elif r.status == Status.LEFT:
                self.on_dead(now, Dead(r.name, r.incarnation, r.name))
            else:
                self.on_suspect(now, Suspect(r.name, r.incarnation, self.name))

    def reap(self, now: float) -> None:
        """Forget members dead or gone for longer than ``gossip_to_the_dead_time``."""
        horizon = now - self.config.gossip_to_the_dead_time
        gone = [
            s.name
            for s in self.nodes.values()
            if s.status in (Status.DEAD, Status.LEFT) and s.changed_at < horizon
        ]
        if gone:
            for name in gone:
                del self.nodes[name]
            self.probe_order = [n for n in self.probe_order if n in self.nodes]
