"""The asyncio adapter: runs a pure :class:`Swim` on a UDP socket, a TCP listener and the
event loop's clock. All protocol decisions stay in ``Swim``; this file only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from peer_ring.discovery.gossip._address import format_address
from peer_ring.discovery.gossip._codec import encode
from peer_ring.discovery.gossip._config import GossipConfig
from peer_ring.discovery.gossip._membership import initial_incarnation
from peer_ring.discovery.gossip._messages import Ack, Address, Message, Ping, PushPull
from peer_ring.discovery.gossip._outputs import OpenStream, SendPacket, StreamPing
from peer_ring.discovery.gossip._packet import BadPacketError, PacketCodec
from peer_ring.discovery.gossip._protocol import Swim

logger = logging.getLogger(__name__)

_FRAME = struct.Struct(">I")

#: Attempts to bind the UDP socket again after it was closed under the node, one probe
#: interval apart (the first at once).
REBIND_ATTEMPTS = 5


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, runtime: GossipRuntime) -> None:
        self._runtime = runtime
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        # Also called after the runtime's own close(): the runtime tells the two apart.
        if self._transport is not None:
            self._runtime.on_udp_lost(self._transport, exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._runtime.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the failure detector already copes with it.
        logger.debug("UDP error: %s", exc)


class GossipRuntime:
    """One running gossip node.

    Args:
        name: the member name (the node's peer-ring address).
        bind: gossip ``(host, port)`` to bind UDP and TCP on (port 0: any free port, the
            same for both).
        advertise: the gossip address announced to others (default: the bound one).
        seeds: gossip addresses to join through.
        config: protocol settings.
        codec: packet framing (cluster name, optional encryption).
        meta: this node's metadata.
        on_change: called (on the loop) whenever the live member set or metadata changed.
        rng: randomness (default: a fresh ``random.Random()``).
    """

    def __init__(
        self,
        *,
        name: str,
        bind: Address,
        advertise: Address | None,
        seeds: list[Address],
        config: GossipConfig,
        codec: PacketCodec,
        meta: Mapping[str, str],
        on_change: Callable[[], None],
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.bind = bind
        self.advertise = advertise
        self.seeds = seeds
        self.config = config
        self.codec = codec
        self.meta = dict(meta)
        self.swim: Swim | None = None
        self.stats: Counter[str] = Counter()
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_addr: Address = bind
        self._server: asyncio.Server | None = None
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._version = -1
        self._joined = asyncio.Event()

    @property
    def address(self) -> Address:
        """The gossip address others reach this node at."""
        assert self.swim is not None
        return self.swim.addr

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def start(self) -> None:
        """Bind the sockets and start the protocol (joining the seeds in the background).

        Raises:
            OSError: the gossip address cannot be bound.
        """
        host, port = self.bind
        self._server = await asyncio.start_server(
            self._serve_stream, host, port, reuse_address=True
        )
        bound_port = self._server.sockets[0].getsockname()[1]
        self._udp_addr = (host, bound_port)
        try:
            self._udp = await self._bind_udp()
        except OSError:
            self._server.close()
            raise
        addr = self.advertise or (host, bound_port)
        self.swim = Swim(
            self.name,
            addr,
            config=self.config,
            now=self._now(),
            rng=self._rng,
            incarnation=initial_incarnation(time.time()),
            meta=self.meta,
            seeds=self.seeds,
            packet_overhead=self.codec.overhead(),
        )
        if self.swim.joined:
            self._joined.set()
        self._flush()
        self._loop_task = asyncio.create_task(self._run(), name=f"gossip {self.name}")

    async def _bind_udp(self) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=self._udp_addr
        )
        return transport

    def on_udp_lost(self, transport: asyncio.BaseTransport, exc: Exception | None) -> None:
        """The UDP transport ``transport`` was closed (``connection_lost``).

        Closed by :meth:`stop` (or already replaced): nothing to do. Closed under the node
        (the socket closed by someone else, a fatal socket error): sending to it would fail
        inside asyncio and nothing would arrive any more, so the node logs an error, drops
        its packets meanwhile and binds the same address again (:data:`REBIND_ATTEMPTS`
        attempts); if that fails too, the node stops gossiping (see :meth:`_rebind`).
        """
        if transport is not self._udp:
            return
        self._udp = None
        swim = self.swim
        if swim is None or swim.stopped:
            return
        self.stats["udp_lost"] += 1
        logger.error(
            "the gossip UDP socket of %s on %s was closed under it (%s); binding it again",
            self.name,
            format_address(self._udp_addr),
            exc if exc is not None else "closed",
        )
        self._spawn(self._rebind())

    async def _rebind(self) -> None:
        error: OSError | None = None
        for attempt in range(REBIND_ATTEMPTS):
            if attempt:
                await asyncio.sleep(self.config.probe_interval)
            swim = self.swim
            if swim is None or swim.stopped or self._udp is not None:
                return
            try:
                self._udp = await self._bind_udp()
            except OSError as exc:
                error = exc
                logger.warning(
                    "binding gossip UDP %s again failed: %s", format_address(self._udp_addr), exc
                )
                continue
            self.stats["udp_rebinds"] += 1
            logger.warning(
                "gossip UDP socket of %s bound again on %s",
                self.name,
                format_address(self._udp_addr),
            )
            return
        # No UDP, no probes answered: the others will declare this node failed anyway.
        # Stopping says so here too, instead of a node that looks alive to itself.
        logger.error(
            "gossip of %s stopped: its UDP socket on %s cannot be bound again (%s); the "
            "other members will declare this node failed",
            self.name,
            format_address(self._udp_addr),
            error,
        )
        self.stats["udp_rebind_failed"] += 1
        self._halt()

    def _halt(self) -> None:
        """Stop the protocol and the TCP listener from inside (``stop()`` still cleans up)."""
        if self.swim is not None:
            self.swim.stop()
        self._wake.set()  # the timer loop sees ``stopped`` and ends
        if self._server is not None:
            self._server.close()

    def wake(self) -> None:
        """Flush the protocol's outputs after an outside change (metadata update)."""
        self._flush()

    async def wait_joined(self, timeout: float) -> bool:
        """Wait until a seed answered (True), or ``timeout`` (False)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._joined.wait(), timeout)
        return self._joined.is_set()

    async def leave(self, timeout: float) -> None:
        """Announce the leave and wait (up to ``timeout``) until it has been sent out."""
        swim = self.swim
        if swim is None or swim.stopped:
            return
        swim.leave(self._now())
        self._flush()
        deadline = self._now() + timeout
        while not swim.leave_sent() and swim.live > 0:
            remaining = deadline - self._now()
            if remaining <= 0:
                break
            self._flushed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), remaining)

    async def stop(self) -> None:
        """Close the sockets and stop the protocol; idempotent."""
        if self.swim is not None:
            self.swim.stop()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        udp, self._udp = self._udp, None  # first: its connection_lost is then ours
        if udp is not None:
            udp.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    # ---- the timer loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        swim = self.swim
        assert swim is not None
        while not swim.stopped:
            deadline = swim.next_deadline()
            delay = None if deadline is None else max(0.0, deadline - self._now())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            try:
                swim.tick(self._now())
                self._flush()
            except Exception:  # a bug must not silently end membership: log, go on
                logger.exception("gossip timer handling failed")
                self.stats["internal_errors"] += 1

    def _flush(self) -> None:
        swim = self.swim
        if swim is None:
            return
        for out in swim.take_outputs():
            if isinstance(out, SendPacket):
                self._send_packet(out)
            elif isinstance(out, OpenStream):
                self._spawn(self._push_pull(out))
            elif isinstance(out, StreamPing):
                self._spawn(self._stream_ping(out))
        swim.events.clear()
        if swim.joined and not self._joined.is_set():
            self._joined.set()
        if swim.version != self._version:
            self._version = swim.version
            self._on_change()
        self._wake.set()
        self._flushed.set()

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_packet(self, out: SendPacket) -> None:
        if self._udp is None:  # lost, being bound again: a lost packet
            self.stats["udp_send_errors"] += 1
            return
        data = self.codec.pack(list(out.messages))
        try:
            self._udp.sendto(data, out.to)
        except OSError as exc:  # unreachable network and the like: a lost packet
            logger.debug("UDP send to %s failed: %s", out.to, exc)
            self.stats["udp_send_errors"] += 1
            return
        self.stats["packets_sent"] += 1
        self.stats["bytes_sent"] += len(data)

    def on_datagram(self, data: bytes, src: Address) -> None:
        """Handle one inbound UDP packet."""
        swim = self.swim
        if swim is None or swim.stopped:
            return
        self.stats["packets_received"] += 1
        try:
            messages = self.codec.unpack(data)
        except BadPacketError as exc:
            self.stats[f"bad_packets.{exc.reason}"] += 1
            logger.debug("dropped a packet from %s: %s", src, exc)
            return
        try:
            swim.handle_packet(self._now(), src, messages)
            self._flush()
        except Exception:  # never let one packet take the node down
            logger.exception("handling a gossip packet from %s failed", src)
            self.stats["internal_errors"] += 1

    # ---- TCP push-pull ------------------------------------------------------------------------

    def _frame(self, msg: Message) -> bytes:
        data = self.codec.pack([encode(msg)])
        return _FRAME.pack(len(data)) + data

    async def _read_frame(self, reader: asyncio.StreamReader) -> PushPull | Ping | Ack:
        header = await reader.readexactly(_FRAME.size)
        (size,) = _FRAME.unpack(header)
        if size > self.config.max_stream_size:
            raise BadPacketError("too_large", f"stream frame of {size} bytes")
        messages = self.codec.unpack(await reader.readexactly(size))
        msg = messages[0] if len(messages) == 1 else None
        if not isinstance(msg, PushPull | Ping | Ack):
            raise BadPacketError("bad_message", "a stream carries one push-pull, ping or ack")
        return msg

    async def _stream_ping(self, out: StreamPing) -> None:
        ok = False
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(out.timeout):
                reader, writer = await asyncio.open_connection(*out.to)
                writer.write(self._frame(out.ping))
                await writer.drain()
                reply = await self._read_frame(reader)
                ok = isinstance(reply, Ack) and reply.seq == out.ping.seq
        except BadPacketError as exc:
            self.stats[f"bad_packets.{exc.reason}"] += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            logger.debug("TCP fallback ping of %s failed: %r", out.to, exc)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        self.stats["tcp_pings_ok" if ok else "tcp_pings_failed"] += 1
        swim = self.swim
        if swim is not None:
            swim.stream_ping_done(self._now(), out.ping.seq, ok)
            self._flush()

    async def _push_pull(self, out: OpenStream) -> None:
        reply: PushPull | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.config.stream_timeout):
                reader, writer = await asyncio.open_connection(*out.to)
                writer.write(self._frame(out.message))
                await writer.drain()
                answer = await self._read_frame(reader)
                if not isinstance(answer, PushPull):
                    raise BadPacketError("bad_message", "push-pull answered by another message")
                reply = answer
            self.stats["push_pulls"] += 1
        except BadPacketError as exc:
            self.stats[f"bad_packets.{exc.reason}"] += 1
            logger.debug("bad push-pull reply from %s: %s", out.to, exc)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            self.stats["push_pull_failures"] += 1
            logger.debug("push-pull with %s failed: %r", out.to, exc)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        swim = self.swim
        if swim is not None:
            swim.stream_done(self._now(), out.id, reply)
            self._flush()

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(self.config.stream_timeout):
                request = await self._read_frame(reader)
                swim = self.swim
                if swim is None or swim.stopped or isinstance(request, Ack):
                    return
                peer = writer.get_extra_info("peername")
                reply = swim.handle_stream(self._now(), (str(peer[0]), int(peer[1])), request)
                self._flush()
                if reply is not None:
                    writer.write(self._frame(reply))
                    await writer.drain()
        except BadPacketError as exc:
            self.stats[f"bad_packets.{exc.reason}"] += 1
            logger.debug("dropped a push-pull: %s", exc)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            logger.debug("serving a push-pull failed: %r", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
