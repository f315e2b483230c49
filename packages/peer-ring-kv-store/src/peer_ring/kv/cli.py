"""The ``peer-ring-kv`` command: ``serve`` (a node with an HTTP API), ``demo`` and ``admin``.

Exit status: 0 on success (including a clean shutdown on SIGTERM/SIGINT), 1 when the node
fails at run time (an address already in use...), 2 for bad usage (a flag or environment
variable that is missing or invalid), 130 when the demo is interrupted.

This module is the application: it is the one place in the package that configures logging.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

try:  # the command's dependencies are the [serve] extra; embedding KVStore needs neither
    import aiohttp  # noqa: F401
    import prometheus_client  # noqa: F401
except ImportError as _missing:  # pragma: no cover - depends on what is installed
    sys.stderr.write(
        f"peer-ring-kv: {_missing}. The command needs the serve extra: "
        "pip install 'peer-ring-kv-store[serve]' (from a checkout: "
        "pip install './packages/peer-ring-kv-store[serve]')\n"
    )
    raise SystemExit(1) from None

from peer_ring.kv.__about__ import __version__
from peer_ring.kv._admin_cli import add_admin_parser, run_admin
from peer_ring.kv._serve_config import (
    ServeConfig,
    UsageError,
    add_serve_arguments,
    build_discovery,
    build_store,
    config_from,
    http_address,
)

logger = logging.getLogger("peer_ring.kv.serve")

#: The message logged once the node serves: tests and the demo wait for it.
READY_MESSAGE = "ready"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The ``peer-ring-kv`` argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="peer-ring-kv",
        description="peer-ring key-value store: run a node (serve) or a local demo (demo).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser(
        "serve",
        help="run a node with an HTTP API (a sidecar for any language)",
        description=(
            "Run one peer-ring KV node: peers talk to it over gRPC on --listen, applications "
            "over HTTP on --http. Every flag has an environment variable; flags win."
        ),
    )
    add_serve_arguments(serve)
    serve.set_defaults(subparser=serve)

    demo = commands.add_parser(
        "demo",
        help="start a local cluster, kill a node, show no key is lost",
        description=(
            "Start a local cluster of `serve` processes, write keys with replication 3 and "
            "quorum 2, SIGKILL one node, read every key back through a survivor, restart the "
            "node, read every key through it, and print what happened. Exits 0 when no key "
            "was lost."
        ),
    )
    demo.add_argument("--nodes", type=int, default=3, help="cluster size (3..9). Default: 3")
    demo.add_argument("--keys", type=int, default=100, help="keys to write. Default: 100")
    demo.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="node i listens on BASE+i (peers) and BASE+1000+i (HTTP). Default: free ports",
    )
    demo.add_argument(
        "--host", default="127.0.0.1", help="loopback address of every node. Default: 127.0.0.1"
    )
    demo.set_defaults(subparser=demo)
    add_admin_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the ``peer-ring-kv`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    if args.command == "serve":
        try:
            config = config_from(args, env)
        except UsageError as exc:
            args.subparser.error(str(exc))  # prints usage and exits with status 2
        return run_serve(config, env)
    if args.command == "demo":
        from peer_ring.kv._demo import DemoOptions, run_demo

        try:
            options = DemoOptions.from_args(args.nodes, args.keys, args.base_port, args.host)
        except ValueError as exc:
            args.subparser.error(str(exc))
        return run_demo(options)
    if args.command == "admin":
        return run_admin(args, env)
    parser.error(f"unknown command {args.command!r}")  # unreachable: argparse checks choices
    return EXIT_USAGE  # pragma: no cover


# -- serve -------------------------------------------------------------------------------------


def configure_logging(level: str) -> None:
    """Log to stderr, one line per record, with time, level and logger name."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # One line per HTTP request would drown the node's own logs (counts are in /metrics).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run_serve(config: ServeConfig, environ: Mapping[str, str] | None = None) -> int:
    """Run a node until SIGTERM/SIGINT; returns the exit status."""
    from peer_ring.core import run

    configure_logging(config.log_level)
    try:
        return run(
            _serve(config, environ),
            gc_threshold=config.gc_threshold,
            gc_freeze_after_start=config.gc_freeze_after_start,
        )
    except UsageError as exc:
        # Problems only detectable once discovery is built (Kubernetes settings).
        print(f"peer-ring-kv serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return EXIT_INTERRUPTED


async def _serve(config: ServeConfig, environ: Mapping[str, str] | None) -> int:
    from peer_ring.core import PeerRingError
    from peer_ring.kv._http_tls import HttpTLSError, ReloadingServerContext
    from peer_ring.kv._server import KVHttpApi, KVHttpServer

    discovery = build_discovery(config, environ)
    listen = discovery.self_address
    http_host, http_port = http_address(config, listen)
    store = build_store(config, discovery)
    api = KVHttpApi(
        store,
        http_token=config.http_token,
        max_value_bytes=config.max_value_bytes,
        replication=config.replication,
        quorum=config.quorum,
    )
    ssl_context = None
    if config.http_tls is not None:
        try:
            ssl_context = ReloadingServerContext(config.http_tls).context
        except HttpTLSError as exc:
            raise UsageError(f"--http-tls-*: {exc}") from None
    server = KVHttpServer(api, http_host, http_port, ssl_context=ssl_context)

    stop = asyncio.Event()
    api.drain_handler = stop.set  # POST /admin/drain: the same graceful leave as SIGTERM
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # A second signal while stopping: the operator wants out now.
            logger.warning("second %s: exiting immediately", signal.Signals(signum).name)
            os._exit(EXIT_INTERRUPTED)
        logger.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    store_starting = False
    try:
        # HTTP first, so that /healthz answers (and /readyz says 503) while the node joins.
        try:
            await server.start()
        except OSError as exc:
            logger.error("cannot serve HTTP on %s:%d: %s", http_host, http_port, exc)
            return EXIT_FAILURE
        store_starting = True
        start = asyncio.ensure_future(store.start())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await start
            return EXIT_OK  # stopped while joining
        stopper.cancel()
        try:
            start.result()
        except OSError as exc:
            logger.error("cannot listen for peers on %s: %s", listen, exc)
            return EXIT_FAILURE
        except PeerRingError as exc:
            # A typed error says what is wrong (a registry unreachable at start, a refused
            # credential): one line, no traceback.
            logger.error("the node failed to start: %s", exc)
            return EXIT_FAILURE
        except Exception:
            logger.exception("the node failed to start")
            return EXIT_FAILURE
        # The ready line promises what /readyz promises: the node joined the ring AND
        # pulled the partitions it replicates (its initial sync). A signal while syncing
        # still leaves gracefully.
        syncing = asyncio.ensure_future(store.wait_ready())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({syncing, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not syncing.done():
            syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await syncing
        api.set_ready(True)
        if not stop.is_set():
            logger.info(
                "%s peer=%s http=%s members=%d partitions=%d replication=%d",
                READY_MESSAGE,
                listen,
                server.url,
                len(store.node.ring.members),
                store.node.ring.partitions,
                config.replication,
            )
        members = len(store.node.ring.members)
        quorum = store.node.config.quorum_for(config.replication)
        if members < quorum:
            # Legal (more nodes may join), but a surprise when trying a single node out.
            logger.warning(
                "only %d member(s) for the default quorum of %d: reads and writes will fail "
                "with 503 until more nodes join (for one node, use --replication 1)",
                members,
                quorum,
            )
        await stop.wait()
        # Graceful leave (SIGTERM, or Ctrl-C): hand this node's partitions to the nodes that
        # take them over before exiting, so a scale-down or rolling restart loses no copy.
        api.set_ready(False)
        try:
            report = await store.leave()
            logger.info("left the ring: %s", report)
        except Exception:
            logger.exception("graceful leave failed; stopping without handoff")
        return EXIT_OK
    finally:
        api.set_ready(False)
        await server.stop()
        if store_starting:
            # Also after a failed or interrupted start: whatever did start (the peer
            # listener...) must be released. stop() is idempotent.
            try:
                await store.stop()
            except Exception:
                logger.exception("error while stopping the store")
        for signum in signals:
            loop.remove_signal_handler(signum)
        logger.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
