"""Configuration of ``peer-ring-kv serve``: command-line flags, environment variables, checks.

Every setting has a flag and a ``PEER_RING_*`` environment variable (a container is usually
configured through its environment, a laptop through flags). Precedence: flag, then
environment, then default. All checks happen here, before anything binds a port, so a
mistake is reported as one clear line and exit status 2 (the usual code for bad usage).

This module merges and validates the settings into a :class:`ServeConfig`; the table of
settings is in :mod:`peer_ring.kv._serve_options`, the value parsers in
:mod:`peer_ring.kv._serve_values`, and :func:`~peer_ring.kv._serve_build.build_store` turns a
config into a :class:`~peer_ring.kv.KVStore` (the only place that imports the store and
discovery).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peer_ring.core import (
    DEFAULT_PARTITIONS,
    PeerRingConfig,
    TLSConfig,
    TransportLimits,
)
from peer_ring.kv._discovery_plugins import (
    BUILTIN_DISCOVERIES,
    available_discoveries,
    parse_options,
)
from peer_ring.kv._http_tls import HttpTLSConfig
from peer_ring.kv._serve_build import build_discovery, build_store
from peer_ring.kv._serve_options import (
    _MESSAGE_OVERHEAD_BYTES,
    _OPTIONS,
    DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_REQUEST_TIMEOUT,
    ENV_VARS,
    HTTP_PORT_OFFSET,
    LOG_LEVELS,
    DiscoveryKind,
    UsageError,
)
from peer_ring.kv._serve_values import (
    _address,
    _bool,
    _http_tls,
    _int,
    _int_or_none,
    _seconds,
    _seconds_or_off,
    _secret,
    _size_or_none,
    _tls,
    default_http_address,
    is_loopback,
    parse_size,
    split_address,
)

# The settings' table, value parsers and node building live in their own modules; the names
# callers import from here stay importable from here.
__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "DEFAULT_REQUEST_TIMEOUT",
    "ENV_VARS",
    "HTTP_PORT_OFFSET",
    "LOG_LEVELS",
    "DiscoveryKind",
    "ServeConfig",
    "UsageError",
    "add_serve_arguments",
    "build_discovery",
    "build_store",
    "config_from",
    "default_http_address",
    "http_address",
    "is_loopback",
    "parse_size",
    "split_address",
]


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """The validated settings of one ``peer-ring-kv serve`` node.

    Attributes:
        listen: peer (gRPC) ``host:port``; ``None`` only with Kubernetes discovery, which
            then supplies the address (the pod IP).
        http: HTTP API ``(host, port)``; ``None`` means "derive from ``listen``"
            (see :func:`default_http_address`).
        http_port: HTTP port on the default host, used when ``http`` is ``None``.
        peers: static peer list (empty: a one-node cluster, or unused with Kubernetes).
        peers_file: file of peer addresses re-read at run time (static discovery), or
            ``None``; exclusive with ``peers``.
        discovery: ``"static"``, ``"kubernetes"`` or an installed discovery plugin's name.
        discovery_options: ``--discovery-option`` settings of a discovery plugin.
        replication: default replicas per key.
        quorum: default quorum; ``None`` is a majority of ``replication``.
        partitions: partitions of the ring (identical on every node).
        max_bytes: memory bound of the local store; ``None`` is unbounded.
        max_value_bytes: largest value accepted.
        request_timeout: deadline of one replicated operation, in seconds.
        token: shared peer secret, or ``None``.
        http_token: bearer token of the HTTP API, or ``None``.
        tls: mutual TLS between peers (certificate files), or ``None`` for plaintext.
        http_tls: HTTPS (and optional client certificates) on the HTTP API, or ``None``.
        transport: ``"grpc"`` (default) or ``"tcp"``: the peer transport.
        down_after: seconds before an unreachable peer leaves the ring (None: never).
        anti_entropy_interval: mean seconds between anti-entropy rounds (None: off).
        leave_deadline: seconds the graceful leave on SIGTERM may take.
        log_level: one of :data:`LOG_LEVELS`.
        gc_threshold: Python's young-generation collection threshold while the node runs
            (``peer_ring.core.run(gc_threshold=...)``); ``None`` keeps Python's.
        gc_freeze_after_start: ``gc.freeze()`` what is alive once the node has started
            (``peer_ring.core.run(gc_freeze_after_start=...)``).
    """

    listen: str | None
    http: tuple[str, int] | None = None
    http_port: int | None = None
    peers: tuple[str, ...] = ()
    peers_file: str | None = None
    discovery: DiscoveryKind = "static"
    discovery_options: tuple[tuple[str, str], ...] = ()
    replication: int = 3
    quorum: int | None = None
    partitions: int = DEFAULT_PARTITIONS
    max_bytes: int | None = None
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    token: str | None = field(default=None, repr=False)
    http_token: str | None = field(default=None, repr=False)
    tls: TLSConfig | None = None
    http_tls: HttpTLSConfig | None = None
    down_after: float | None = 10.0
    anti_entropy_interval: float | None = 30.0
    leave_deadline: float = 30.0
    log_level: str = "info"
    transport: str = "grpc"
    gc_threshold: int | None = None
    gc_freeze_after_start: bool = False

    def peer_config(self) -> PeerRingConfig:
        """The :class:`~peer_ring.core.PeerRingConfig` of the node these settings describe."""
        limits = TransportLimits()
        # A value must fit in one peer message with its key and version around it; raise the
        # transport bound when the value bound asks for it rather than failing at run time.
        needed = self.max_value_bytes + _MESSAGE_OVERHEAD_BYTES
        if needed > limits.max_message_bytes:
            limits = dataclasses.replace(limits, max_message_bytes=needed)
        return PeerRingConfig(
            partitions=self.partitions,
            replication=self.replication,
            quorum=self.quorum,
            request_timeout=self.request_timeout,
            transport_limits=limits,
            token=self.token,
            tls=self.tls,
            down_after=self.down_after,
            anti_entropy_interval=self.anti_entropy_interval,
            leave_deadline=self.leave_deadline,
            transport=self.transport,
        )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``serve`` flag to ``parser`` (defaults are applied by :func:`config_from`)."""
    for option in _OPTIONS:
        # default=None everywhere: "not given" must be distinguishable from "given the
        # default value" so that the environment variable can fill the gap.
        help_text = f"{option.help} [env: {option.env}]"
        if option.switch:
            # "true" (not True) so that config_from reads it like the variable's text.
            parser.add_argument(
                option.flag,
                dest=option.dest,
                default=None,
                action="store_const",
                const="true",
                help=help_text,
            )
            continue
        parser.add_argument(
            option.flag,
            dest=option.dest,
            default=None,
            metavar=option.metavar,
            choices=option.choices,
            action="append" if option.repeat else "store",
            help=help_text,
        )


def config_from(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeConfig:
    """Merge parsed flags with the environment and validate the result.

    Args:
        args: the namespace produced by a parser set up with :func:`add_serve_arguments`.
        environ: the environment (``os.environ`` in the CLI; a dict in tests).

    Raises:
        UsageError: a missing or invalid setting, with a message naming the flag and
            the environment variable.
    """
    raw: dict[str, tuple[str, str] | None] = {}
    for option in _OPTIONS:
        value: Any = getattr(args, option.dest, None)
        if isinstance(value, list):  # a repeatable flag (action="append")
            value = " ".join(value)
        if value is not None:
            raw[option.dest] = (str(value), option.flag)
            continue
        env_value = environ.get(option.env, "").strip()
        # An empty variable counts as unset: that is what `FOO= cmd` and empty ConfigMap
        # entries mean in practice.
        raw[option.dest] = (env_value, option.env) if env_value else None
    return _validate(raw)


def _validate(raw: Mapping[str, tuple[str, str] | None]) -> ServeConfig:
    discovery_raw = raw.get("discovery")
    discovery: DiscoveryKind = "static"
    if discovery_raw is not None:
        text, origin = discovery_raw
        known = available_discoveries()
        if text not in known:
            raise UsageError(
                f"{origin}: unknown discovery {text!r}; installed: {', '.join(known)} "
                "(other kinds need their package, e.g. pip install "
                f"peer-ring-discovery-{text})"
            )
        discovery = text
    discovery_options: dict[str, str] = {}
    if (item := raw.get("discovery_options")) is not None:
        if discovery in BUILTIN_DISCOVERIES:
            raise UsageError(
                f"{item[1]} configures a discovery package, not the built-in {discovery!r} "
                "discovery (use --peers, --peers-file or the Kubernetes environment)"
            )
        try:
            discovery_options = parse_options([item])
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    listen: str | None = None
    if (item := raw.get("listen")) is not None:
        listen = _address(item, allow_port_zero=False)
    elif discovery == "static":
        raise UsageError(
            "the peer address is required: pass --listen HOST:PORT or set PEER_RING_SELF_ADDRESS"
        )

    http: tuple[str, int] | None = None
    if (item := raw.get("http")) is not None:
        text = _address(item, allow_port_zero=True)
        http = split_address(text)
    http_port = _int_or_none(raw.get("http_port"), minimum=0)
    if http_port is not None and http_port > 65535:
        item = raw.get("http_port")
        raise UsageError(f"{item[1] if item else '--http-port'}: must be <= 65535")

    peers: tuple[str, ...] = ()
    if (item := raw.get("peers")) is not None:
        text, origin = item
        parts = [p.strip() for p in text.split(",") if p.strip()]
        peers = tuple(dict.fromkeys(_address((p, origin), allow_port_zero=False) for p in parts))
        if discovery != "static":
            raise UsageError(f"{origin} is only used with static discovery, not {discovery}")

    peers_file: str | None = None
    if (item := raw.get("peers_file")) is not None:
        text, origin = item
        if discovery != "static":
            raise UsageError(f"{origin} is only used with static discovery, not {discovery}")
        if peers:
            # Two sources of one member list would disagree sooner or later.
            raise UsageError(f"{origin}: give either --peers or --peers-file, not both")
        peers_file = text.strip()

    replication = _int(raw.get("replication"), minimum=1, default=3)
    quorum = _int_or_none(raw.get("quorum"), minimum=1)
    if quorum is not None and quorum > replication:
        item = raw.get("quorum")
        origin = item[1] if item is not None else "--quorum"
        raise UsageError(
            f"{origin}: quorum ({quorum}) cannot be greater than replication ({replication})"
        )
    partitions = _int(raw.get("partitions"), minimum=1, default=DEFAULT_PARTITIONS)
    members = len(set(peers) | ({listen} if listen else set()))
    if members > partitions:
        raise UsageError(
            f"{members} peers cannot share {partitions} partitions: every node must own at "
            "least one (raise --partitions)"
        )
    max_bytes = _size_or_none(raw.get("max_bytes"))
    max_value_bytes = _size_or_none(raw.get("max_value_bytes"))
    if max_value_bytes is None:
        max_value_bytes = DEFAULT_MAX_VALUE_BYTES
    if max_bytes is not None and max_value_bytes > max_bytes:
        raise UsageError(
            f"--max-value-bytes ({max_value_bytes}) cannot be greater than --max-bytes "
            f"({max_bytes}): such a value could never be stored"
        )
    request_timeout = _seconds(raw.get("request_timeout"), default=DEFAULT_REQUEST_TIMEOUT)
    tls = _tls(raw)
    http_tls = _http_tls(raw)
    transport = "grpc"
    if (item := raw.get("transport")) is not None:
        text, origin = item
        if text.strip().lower() not in ("grpc", "tcp"):
            raise UsageError(f"{origin}: expected grpc or tcp, got {text!r}")
        transport = text.strip().lower()
    down_after = _seconds_or_off(raw.get("down_after"), default=10.0)
    anti_entropy_interval = _seconds_or_off(raw.get("anti_entropy_interval"), default=30.0)
    leave_deadline = _seconds(raw.get("leave_deadline"), default=30.0)
    log_level = "info"
    if (item := raw.get("log_level")) is not None:
        text, origin = item
        if text.lower() not in LOG_LEVELS:
            raise UsageError(f"{origin}: expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
        log_level = text.lower()
    # Checked here like every other setting (core.run would raise too, but only after
    # logging was configured, and with a message naming no flag).
    gc_threshold = _int_or_none(raw.get("gc_threshold"), minimum=1)
    gc_freeze_after_start = _bool(raw.get("gc_freeze_after_start"), default=False)

    config = ServeConfig(
        listen=listen,
        http=http,
        http_port=http_port,
        peers=peers,
        peers_file=peers_file,
        discovery=discovery,
        discovery_options=tuple(sorted(discovery_options.items())),
        replication=replication,
        quorum=quorum,
        partitions=partitions,
        max_bytes=max_bytes,
        max_value_bytes=max_value_bytes,
        request_timeout=request_timeout,
        token=_secret(raw.get("token")),
        http_token=_secret(raw.get("http_token")),
        tls=tls,
        http_tls=http_tls,
        down_after=down_after,
        anti_entropy_interval=anti_entropy_interval,
        leave_deadline=leave_deadline,
        log_level=log_level,
        transport=transport,
        gc_threshold=gc_threshold,
        gc_freeze_after_start=gc_freeze_after_start,
    )
    if config.listen is not None:
        http_address(config, config.listen)  # fail now (exit 2) if it cannot be derived
    return config


def http_address(config: ServeConfig, listen: str) -> tuple[str, int]:
    """The HTTP address to bind: ``--http``, else the default host with ``--http-port``,
    else :func:`default_http_address`.

    Raises:
        UsageError: the port cannot be derived.
    """
    if config.http is not None:
        return config.http
    host, port = default_http_address(listen, config.http_port)
    return host, port
