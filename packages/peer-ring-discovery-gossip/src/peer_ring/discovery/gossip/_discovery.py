"""``GossipDiscovery``: the core's ``Discovery`` protocol on top of SWIM gossip."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from peer_ring.core import InvalidArgumentError, Member
from peer_ring.discovery.gossip._address import format_address, parse_address
from peer_ring.discovery.gossip._config import GossipConfig
from peer_ring.discovery.gossip._keyring import Keyring
from peer_ring.discovery.gossip._membership import MAX_METADATA_BYTES, metadata_size
from peer_ring.discovery.gossip._messages import Address
from peer_ring.discovery.gossip._packet import PacketCodec
from peer_ring.discovery.gossip._runtime import GossipRuntime

logger = logging.getLogger(__name__)


class GossipDiscovery:
    """Membership by SWIM gossip with Lifeguard: no registry, only seed addresses.

    Each node runs a small UDP/TCP gossip listener (``bind``, default port 7946) beside its
    peer-ring gRPC listener. The member *name* gossiped is ``self_address``, the peer-ring
    address, which the ring uses as the node's identity; the gossip address travels with it.

    Args:
        bind: ``host:port`` (or ``(host, port)``) of the gossip listener; UDP and TCP use
            the same port. Port 0 picks a free one.
        seeds: gossip addresses of some existing members to join through (any one that
            answers is enough; this node's own address is skipped). Empty for the first node.
        self_address: this node's peer-ring (gRPC) ``host:port``: its identity.
        metadata: labels gossiped with this node (``Member.metadata``, e.g. ``zone``).
        config: protocol settings (default :meth:`GossipConfig.lan`).
        keyring: encrypt and authenticate every packet with AES-GCM (shared keys).
        advertise: the gossip address announced to others when ``bind`` is a wildcard or is
            NATed (default: the bound address).
        join_timeout: how long :meth:`start` waits for a seed to answer before returning a
            view of this node alone (joining then continues in the background).
        leave_timeout: how long :meth:`stop` waits for the leave announcement to go out.
        rng: randomness (for reproducible tests).

    Raises:
        InvalidArgumentError: malformed addresses or settings.
    """

    def __init__(
        self,
        bind: str | Address = "0.0.0.0:7946",
        seeds: Iterable[str | Address] = (),
        *,
        self_address: str,
        metadata: Mapping[str, str] | None = None,
        config: GossipConfig | None = None,
        keyring: Keyring | None = None,
        advertise: str | Address | None = None,
        join_timeout: float = 5.0,
        leave_timeout: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._self = self_address.strip()
        parse_address(self._self, default_port=None)
        self._bind = _addr(bind)
        self._advertise = None if advertise is None else _addr(advertise)
        if self._advertise is None and self._bind[0] in ("0.0.0.0", "::", ""):
            # Announce the host of the peer-ring address: it is reachable by the peers.
            self._advertise = (parse_address(self._self)[0].strip("[]"), self._bind[1])
        self._seeds = [_addr(s) for s in seeds]
        self._config = config or GossipConfig.lan()
        self._metadata = check_metadata(metadata or {})
        self._keyring = keyring
        self._join_timeout = join_timeout
        self._leave_timeout = leave_timeout
        self._rng = rng
        self._runtime: GossipRuntime | None = None
        self._changed = asyncio.Event()
        self._stopped = False
        self._snapshot: frozenset[Member] = frozenset()

    # ---- Discovery protocol ------------------------------------------------------------------

    @property
    def self_address(self) -> str:
        """This node's peer-ring address (its member name)."""
        return self._self

    @property
    def gossip_address(self) -> str:
        """The gossip ``host:port`` other members reach this node at (after ``start``)."""
        if self._runtime is None or self._runtime.swim is None:
            return format_address(self._advertise or self._bind)
        return format_address(self._runtime.address)

    @property
    def keyring(self) -> Keyring | None:
        """The keyring, for key rotation at run time (``add``, ``use``, ``remove``)."""
        return self._keyring

    async def start(self) -> frozenset[Member]:
        """Bind the gossip listener, join through the seeds, return the first view.

        Waits up to ``join_timeout`` for a seed to answer; when none does (this is the
        first node, or the seeds start later), the view is this node alone and joining
        continues in the background.

        Raises:
            OSError: the gossip address cannot be bound (in use, not local).
        """
        if self._runtime is not None:
            return self._snapshot
        seeds = [await _resolve(s) for s in self._seeds]
        codec = PacketCodec(self._config.cluster, self._keyring, self._config.max_packet_size)
        runtime = GossipRuntime(
            name=self._self,
            bind=self._bind,
            advertise=self._advertise,
            seeds=seeds,
            config=self._config,
            codec=codec,
            meta=self._metadata,
            on_change=self._on_change,
            rng=self._rng,
        )
        await runtime.start()
        self._runtime = runtime
        if seeds and not await runtime.wait_joined(self._join_timeout):
            logger.warning(
                "no gossip seed of %s answered within %.1f s; starting alone and retrying",
                [format_address(s) for s in seeds],
                self._join_timeout,
            )
        self._snapshot = self._members()
        return self._snapshot

    async def watch(self) -> AsyncIterator[frozenset[Member]]:
        """Yield the member set each time it changes (coalesced), until :meth:`stop`."""
        while not self._stopped:
            await self._changed.wait()
            self._changed.clear()
            if self._stopped:
                return
            snapshot = self._members()
            if snapshot != self._snapshot or _meta_changed(snapshot, self._snapshot):
                self._snapshot = snapshot
                yield snapshot

    async def stop(self, *, leave: bool = True) -> None:
        """Leave gracefully (announced at once, waiting up to ``leave_timeout``), then
        close the listener; idempotent.

        Args:
            leave: False closes without announcing anything, as a crash would (the others
                then detect the failure); for tests and for handing the address over to a
                restarted process.
        """
        if self._stopped:
            return
        self._stopped = True
        self._changed.set()
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            if leave:
                await runtime.leave(self._leave_timeout)
            await runtime.stop()

    # ---- extras -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: packets and bytes sent/received, bad packets by reason
        (``bad_packets.<reason>``), push-pulls, TCP fallback pings, probes, suspicions
        raised, refutations, the Lifeguard health score, and the UDP socket closed under
        the node (``udp_lost``), bound again (``udp_rebinds``) or not (``udp_rebind_failed``)."""
        runtime = self._runtime
        if runtime is None or runtime.swim is None:
            return {}
        swim = runtime.swim
        out: dict[str, Any] = dict(runtime.stats)
        out.update(
            probes=swim.probes_sent,
            suspicions_raised=swim.suspicions_raised,
            probes_answered_over_tcp_only=swim.tcp_rescues,
            refutations=swim.refutations,
            health_score=swim.awareness.score,
            incarnation=swim.me.incarnation,
            members=swim.live,
        )
        return out

    def gossip_addresses(self) -> dict[str, str]:
        """Gossip ``host:port`` of each live member, by member name."""
        runtime = self._runtime
        if runtime is None or runtime.swim is None:
            return {}
        return {s.name: format_address(s.addr) for s in runtime.swim.live_members()}

    def update_metadata(self, metadata: Mapping[str, str]) -> None:
        """Replace this node's metadata and gossip the change.

        Raises:
            InvalidArgumentError: not string pairs, or more than ``MAX_METADATA_BYTES``.
        """
        self._metadata = check_metadata(metadata)
        runtime = self._runtime
        if runtime is not None and runtime.swim is not None:
            runtime.swim.update_meta(asyncio.get_running_loop().time(), self._metadata)
            runtime.wake()

    def _on_change(self) -> None:
        self._changed.set()

    def _members(self) -> frozenset[Member]:
        runtime = self._runtime
        if runtime is None or runtime.swim is None:
            return frozenset({Member(self._self, MappingProxyType(dict(self._metadata)))})
        return frozenset(Member(s.name, s.meta) for s in runtime.swim.live_members())


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` as a dict, checked: string pairs of at most ``MAX_METADATA_BYTES`` encoded
    (an announcement must fit in one UDP packet with room for others, as in memberlist).

    Raises:
        InvalidArgumentError: not string pairs, or too large.
    """
    out = dict(metadata)
    for k, v in out.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgumentError("metadata keys and values must be strings")
    size = metadata_size(out)
    if size > MAX_METADATA_BYTES or len(out) > 255:
        raise InvalidArgumentError(
            f"metadata takes {size} bytes encoded ({len(out)} entries); the limit is "
            f"{MAX_METADATA_BYTES} bytes and 255 entries"
        )
    return out


def _addr(value: str | Address) -> Address:
    if isinstance(value, tuple):
        return value[0], int(value[1])
    return parse_address(value)


async def _resolve(addr: Address) -> Address:
    """The first IP of ``addr``'s host, so that seeds compare equal to packet sources."""
    host, port = addr
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        logger.warning("cannot resolve gossip seed %s: %s", host, exc)
        return addr
    return str(infos[0][4][0]), port


def _meta_changed(a: frozenset[Member], b: frozenset[Member]) -> bool:
    old = {m.address: m.metadata for m in b}
    return any(old.get(m.address) != m.metadata for m in a)
