"""``peer-ring-ratelimit``: run a rate limiter node with an HTTP API.

::

    peer-ring-ratelimit serve --listen 127.0.0.1:7201 --http 127.0.0.1:8201 \\
        --peers 127.0.0.1:7201,127.0.0.2:7201,127.0.0.3:7201 --replication 2

Membership comes from ``--peers`` (a fixed list) or ``--peers-file`` (re-read every second,
so a cluster can grow and shrink). SIGTERM/SIGINT hand this node's key states to the others
(a graceful leave) before exiting. Exit status: 0 after a clean shutdown, 1 when the node
fails (an address in use...), 2 for bad usage.

This module is the application: it is the one place in the package that configures logging.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from peer_ring.core import PeerRingConfig
from peer_ring.ratelimit.__about__ import __version__
from peer_ring.ratelimit._policy import FailPolicy, Mode

logger = logging.getLogger("peer_ring.ratelimit.cli")


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="peer-ring-ratelimit", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a node with the HTTP API")
    s.add_argument("--listen", required=True, metavar="HOST:PORT", help="peer (gRPC) address")
    s.add_argument("--http", required=True, metavar="HOST:PORT", help="HTTP API address")
    members = s.add_mutually_exclusive_group(required=True)
    members.add_argument("--peers", metavar="A,B,C", help="every member's peer address")
    members.add_argument("--peers-file", metavar="PATH", help="file listing the members")
    s.add_argument("--replication", type=int, default=2, help="copies of each key's state (2)")
    s.add_argument(
        "--fail-policy",
        choices=[f.value for f in FailPolicy],
        default=FailPolicy.LOCAL_ESTIMATE.value,
        help="when the owner is unreachable (local-estimate)",
    )
    s.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.OWNER.value)
    s.add_argument("--timeout", type=float, default=1.0, help="forwarded hit deadline, s (1)")
    s.add_argument("--partitions", type=int, default=None, help="ring partitions (core default)")
    s.add_argument(
        "--down-after", type=float, default=10.0, help="seconds before a silent peer is removed"
    )
    s.add_argument("--leave-deadline", type=float, default=30.0, help="graceful leave bound, s")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``peer-ring-ratelimit``."""
    args = parser().parse_args(argv)
    if args.replication < 1:
        print("peer-ring-ratelimit: --replication must be >= 1", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from peer_ring.core import run

    try:
        return run(_serve(args))
    except OSError as exc:
        logger.error("cannot serve: %s", exc)
        return 1


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from peer_ring.core.metrics import register_metrics
    from peer_ring.discovery.static import FileDiscovery, StaticDiscovery
    from peer_ring.ratelimit._limiter import RateLimiter
    from peer_ring.ratelimit._server import RateLimitHttpApi

    if args.peers_file:
        discovery: StaticDiscovery | FileDiscovery = FileDiscovery(
            args.peers_file, self_address=args.listen
        )
    else:
        discovery = StaticDiscovery(args.peers.split(","), self_address=args.listen)
    config = PeerRingConfig(down_after=args.down_after)
    if args.partitions:
        config = PeerRingConfig(down_after=args.down_after, partitions=args.partitions)
    limiter = RateLimiter(
        discovery=discovery,
        replication=args.replication,
        fail_policy=args.fail_policy,
        mode=args.mode,
        timeout=args.timeout,
        config=config,
    )
    # /metrics: the node's own figures (ring, data movement, transport) next to the limiter's.
    register_metrics(limiter.node, limiter.metrics.registry)
    api = RateLimitHttpApi(limiter)
    runner = web.AppRunner(api.make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = _split(args.http)
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await limiter.start()
        await limiter.node.wait_ready()
        api.ready = True
        logger.info("serving: peer %s, http %s", args.listen, args.http)
        await stop.wait()
        api.ready = False
        logger.info("leaving the ring")
        with contextlib.suppress(Exception):
            await limiter.leave(args.leave_deadline)
    finally:
        await limiter.stop()
        await runner.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
