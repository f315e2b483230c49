"""Configuration of ``peer-ring-kv serve``: command-line flags, environment variables, checks.

Every setting has a flag and a ``PEER_RING_*`` environment variable (a container is usually
configured through its environment, a laptop through flags). Precedence: flag, then
environment, then default. All checks happen here, before anything binds a port, so a
mistake is reported as one clear line and exit status 2 (the usual code for bad usage).

This module only *describes and validates* the settings; :func:`build_store` turns them into
a :class:`~peer_ring.kv.KVStore` (the only place that imports the store and discovery).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peer_ring.core import (
    DEFAULT_PARTITIONS,
    Discovery,
    InvalidArgumentError,
    PeerRingConfig,
    TLSConfig,
    TransportLimits,
)
from peer_ring.kv._discovery_plugins import (
    BUILTIN_DISCOVERIES,
    available_discoveries,
    load_factory,
    parse_options,
)
from peer_ring.kv._http_tls import HttpTLSConfig

if TYPE_CHECKING:
    from peer_ring.kv import KVStore

#: Default largest value accepted (also the KVStore default).
DEFAULT_MAX_VALUE_BYTES = 1 << 20
#: Default deadline of one replicated operation, in seconds (the core's default).
DEFAULT_REQUEST_TIMEOUT = 2.0
#: Offset between the peer port and the default HTTP port (7101 -> 8101).
HTTP_PORT_OFFSET = 1000
#: Room for keys, versions and framing around the largest value in one peer message.
_MESSAGE_OVERHEAD_BYTES = 1 << 20

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: ``"static"``, ``"kubernetes"`` or the name of an installed discovery plugin
#: (see :mod:`peer_ring.kv._discovery_plugins`).
DiscoveryKind = str


class UsageError(ValueError):
    """A setting is missing or invalid; the message says which and why (exit status 2)."""


@dataclass(frozen=True, slots=True)
class _Option:
    """One setting: its flag, its environment variable and its help text."""

    dest: str
    flag: str
    env: str
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    #: The flag may be given several times; the environment variable holds
    #: whitespace-separated values.
    repeat: bool = False


# The single table that drives both argparse and the environment lookup, so a flag can never
# lack its variable (or the other way round) and `--help` always names both.
_OPTIONS: tuple[_Option, ...] = (
    _Option(
        "listen",
        "--listen",
        "PEER_RING_SELF_ADDRESS",
        "peer (gRPC) address host:port; it is this node's identity in the ring, so every "
        "node must list it with the same spelling in --peers",
        "HOST:PORT",
    ),
    _Option(
        "http",
        "--http",
        "PEER_RING_HTTP_ADDRESS",
        "HTTP API address host:port (port 0 picks a free one). Default: the peer host when it "
        f"is a loopback address, else 127.0.0.1, with the peer port + {HTTP_PORT_OFFSET}",
        "HOST:PORT",
    ),
    _Option(
        "http_port",
        "--http-port",
        "PEER_RING_HTTP_PORT",
        "HTTP API port on the default host (the loopback rule of --http); --http wins "
        "when both are given",
        "PORT",
    ),
    _Option(
        "peers",
        "--peers",
        "PEER_RING_PEERS",
        "comma-separated peer addresses for static discovery (this node's own address may "
        "be included; without --peers the node forms a one-node cluster)",
        "HOST:PORT,...",
    ),
    _Option(
        "peers_file",
        "--peers-file",
        "PEER_RING_PEERS_FILE",
        "file listing the peer addresses (separated by commas, spaces or newlines; # starts "
        "a comment), re-read every second so that editing it adds or removes members at run "
        "time (replace it atomically: write a new file, then rename it). Instead of --peers",
        "PATH",
    ),
    _Option(
        "discovery",
        "--discovery",
        "PEER_RING_DISCOVERY",
        "how peers are found: 'static' (--peers or --peers-file), 'kubernetes' (needs "
        "peer-ring-discovery-k8s) or the name of an installed discovery package "
        "('etcd', 'zookeeper', 'gossip'...; configured with --discovery-option). "
        "Default: static",
        "NAME",
    ),
    _Option(
        "discovery_options",
        "--discovery-option",
        "PEER_RING_DISCOVERY_OPTIONS",
        "a KEY=VALUE setting of the discovery package named by --discovery (its README "
        "lists them); repeat the flag for several (the variable takes them separated by "
        "spaces)",
        "KEY=VALUE",
        repeat=True,
    ),
    _Option(
        "replication",
        "--replication",
        "PEER_RING_REPLICATION",
        "default number of replicas N of each key. Default: 3",
        "N",
    ),
    _Option(
        "quorum",
        "--quorum",
        "PEER_RING_QUORUM",
        "default number of replicas that must answer a read or write. Default: a majority "
        "of the replication (N // 2 + 1)",
        "Q",
    ),
    _Option(
        "partitions",
        "--partitions",
        "PEER_RING_PARTITIONS",
        f"number of partitions; every node must use the same. Default: {DEFAULT_PARTITIONS}",
        "P",
    ),
    _Option(
        "max_bytes",
        "--max-bytes",
        "PEER_RING_MAX_BYTES",
        "memory bound of this node's store (LRU eviction beyond it), bytes or with a "
        "K/M/G suffix (powers of 1024). Default: unbounded",
        "SIZE",
    ),
    _Option(
        "max_value_bytes",
        "--max-value-bytes",
        "PEER_RING_MAX_VALUE_BYTES",
        "largest value accepted (HTTP 413 beyond it), bytes or with a K/M/G suffix. Default: 1M",
        "SIZE",
    ),
    _Option(
        "request_timeout",
        "--request-timeout",
        "PEER_RING_REQUEST_TIMEOUT",
        f"seconds one replicated operation may take. Default: {DEFAULT_REQUEST_TIMEOUT:g}",
        "SECONDS",
    ),
    _Option(
        "down_after",
        "--down-after",
        "PEER_RING_DOWN_AFTER",
        "seconds a peer may stay unreachable before it is taken out of the ring and its "
        "partitions are re-replicated elsewhere; 'off' never does. Default: 10",
        "SECONDS",
    ),
    _Option(
        "anti_entropy_interval",
        "--anti-entropy-interval",
        "PEER_RING_ANTI_ENTROPY_INTERVAL",
        "mean seconds between two anti-entropy rounds (replicas compare digests and repair "
        "what differs); 'off' disables them. Default: 30",
        "SECONDS",
    ),
    _Option(
        "leave_deadline",
        "--leave-deadline",
        "PEER_RING_LEAVE_DEADLINE",
        "seconds a node waits on SIGTERM for its peers to take over its partitions before "
        "it exits. Default: 30",
        "SECONDS",
    ),
    _Option(
        "transport",
        "--transport",
        "PEER_RING_TRANSPORT",
        "how nodes talk to each other: grpc (the interoperable default) or tcp (the same "
        "frames over plain TCP/TLS, cheaper per request). Every node must use the same one",
        "grpc|tcp",
    ),
    _Option(
        "token",
        "--token",
        "PEER_RING_TOKEN",
        "shared secret every peer must present (prefer the environment variable: "
        "command lines are visible to other users). Default: none",
        "SECRET",
    ),
    _Option(
        "http_token",
        "--http-token",
        "PEER_RING_HTTP_TOKEN",
        "bearer token required on the HTTP API except /healthz and /readyz (prefer the "
        "environment variable). Default: none (the API binds to loopback by default)",
        "SECRET",
    ),
    _Option(
        "http_tls_cert",
        "--http-tls-cert",
        "PEER_RING_HTTP_TLS_CERT",
        "PEM certificate (chain) of the HTTP API; with --http-tls-key the API speaks only "
        "HTTPS. The files are re-read when they change (rotation without restart). "
        "Default: plain HTTP",
        "FILE",
    ),
    _Option(
        "http_tls_key",
        "--http-tls-key",
        "PEER_RING_HTTP_TLS_KEY",
        "PEM private key of --http-tls-cert",
        "FILE",
    ),
    _Option(
        "http_tls_ca",
        "--http-tls-ca",
        "PEER_RING_HTTP_TLS_CA",
        "PEM CA (bundle) that HTTP clients' certificates must chain to: every client must "
        "present one (mutual TLS; /healthz and /readyz too). Needs --http-tls-cert. "
        "Default: no client certificate asked",
        "FILE",
    ),
    _Option(
        "tls_ca",
        "--tls-ca",
        "PEER_RING_TLS_CA",
        "PEM file of the CA (bundle) that signs the peers' certificates; with --tls-cert and "
        "--tls-key it turns on mutual TLS between peers. The three files are re-read when "
        "they change (certificate rotation without restart). Default: plaintext",
        "FILE",
    ),
    _Option(
        "tls_cert",
        "--tls-cert",
        "PEER_RING_TLS_CERT",
        "PEM certificate (chain) of this node, presented to peers as server and as client",
        "FILE",
    ),
    _Option(
        "tls_key",
        "--tls-key",
        "PEER_RING_TLS_KEY",
        "PEM private key of --tls-cert",
        "FILE",
    ),
    _Option(
        "tls_server_name",
        "--tls-server-name",
        "PEER_RING_TLS_SERVER_NAME",
        "name every peer certificate carries (a DNS SAN), checked instead of the dialled IP; "
        "without it each certificate needs its node's IP as an IP SAN",
        "NAME",
    ),
    _Option(
        "log_level",
        "--log-level",
        "PEER_RING_LOG_LEVEL",
        "log verbosity: debug, info, warning, error or critical. Default: info",
        "LEVEL",
    ),
)

#: Environment variables read by ``serve``, by destination name (for docs and tests).
ENV_VARS: Mapping[str, str] = {o.dest: o.env for o in _OPTIONS}


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
        parser.add_argument(
            option.flag,
            dest=option.dest,
            default=None,
            metavar=option.metavar,
            choices=option.choices,
            action="append" if option.repeat else "store",
            help=f"{option.help} [env: {option.env}]",
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
    )
    if config.listen is not None:
        http_address(config, config.listen)  # fail now (exit 2) if it cannot be derived
    return config


# -- value parsers ----------------------------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[::1]:8101``) into the host to bind and the port."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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


def default_http_address(listen: str, port: int | None = None) -> tuple[str, int]:
    """The HTTP address used when ``--http`` is not given.

    The peer host when it is a loopback address (so that nodes on 127.0.0.1, 127.0.0.2...
    get distinct HTTP addresses), else 127.0.0.1: the HTTP API is for the application next to
    the node (a sidecar), and exposing it beyond the host must be a decision (``--http``).
    The port is ``port`` when given, else the peer port + 1000.

    Raises:
        UsageError: the derived port would be above 65535.
    """
    host, peer_port = split_address(listen)
    http_port = peer_port + HTTP_PORT_OFFSET if port is None else port
    if http_port > 65535:
        raise UsageError(
            f"cannot derive the HTTP port from peer port {peer_port} "
            f"(+{HTTP_PORT_OFFSET} > 65535): "
            "pass --http HOST:PORT"
        )
    return (host if is_loopback(host) else "127.0.0.1"), http_port


def _address(item: tuple[str, str], *, allow_port_zero: bool) -> str:
    text, origin = item
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise UsageError(f"{origin}: {text!r} is not of the form host:port")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise UsageError(f"{origin}: {text!r} has a bad IPv6 host") from None
    elif ":" in host:
        raise UsageError(f"{origin}: write IPv6 hosts in brackets, like [::1]:7101 (got {text!r})")
    lowest = 0 if allow_port_zero else 1
    if not port_text.isdigit() or not lowest <= int(port_text) <= 65535:
        raise UsageError(f"{origin}: {text!r} has an invalid port (expected {lowest}..65535)")
    return text


def _int(item: tuple[str, str] | None, *, minimum: int, default: int) -> int:
    value = _int_or_none(item, minimum=minimum)
    return default if value is None else value


def _int_or_none(item: tuple[str, str] | None, *, minimum: int) -> int | None:
    if item is None:
        return None
    text, origin = item
    try:
        value = int(text.strip())
    except ValueError:
        raise UsageError(f"{origin}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"{origin}: must be >= {minimum}, got {value}")
    return value


def _seconds(item: tuple[str, str] | None, *, default: float) -> float:
    if item is None:
        return default
    text, origin = item
    try:
        value = float(text.strip())
    except ValueError:
        raise UsageError(f"{origin}: expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{origin}: must be a finite number of seconds > 0, got {text!r}")
    return value


def _seconds_or_off(item: tuple[str, str] | None, *, default: float) -> float | None:
    if item is not None and item[0].strip().lower() in ("off", "none", "never"):
        return None
    return _seconds(item, default=default)


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """Parse ``"1048576"``, ``"512K"``, ``"64MiB"``, ``"1g"``... (suffixes are powers of 1024).

    Raises:
        ValueError: not a size, or zero.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"expected a size like 1048576, 512K or 64MiB, got {text!r}")
    value = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if value <= 0:
        raise ValueError(f"must be > 0, got {text!r}")
    return value


def _size_or_none(item: tuple[str, str] | None) -> int | None:
    if item is None:
        return None
    text, origin = item
    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"{origin}: {exc}") from None


def _tls(raw: Mapping[str, tuple[str, str] | None]) -> TLSConfig | None:
    files = {name: raw.get(name) for name in ("tls_ca", "tls_cert", "tls_key")}
    given = {name: item for name, item in files.items() if item is not None}
    server_name = raw.get("tls_server_name")
    if not given:
        if server_name is not None:
            raise UsageError(f"{server_name[1]} needs --tls-ca, --tls-cert and --tls-key")
        return None
    if len(given) < len(files):
        missing = ", ".join(f"--{n.replace('_', '-')}" for n in files if n not in given)
        origins = ", ".join(origin for _, origin in given.values())
        raise UsageError(f"{origins}: mutual TLS needs all three files; missing {missing}")
    paths: dict[str, str] = {}
    for name, (text, origin) in given.items():
        path = text.strip()
        # Checked here so that a typo fails at once with exit status 2, not at the first
        # connection; the files are read (and checked as PEM) again when the node starts.
        if not os.path.isfile(path):
            raise UsageError(f"{origin}: {path!r} is not a file")
        if not os.access(path, os.R_OK):
            raise UsageError(f"{origin}: {path!r} is not readable")
        paths[name] = path
    override = server_name[0].strip() if server_name is not None else None
    if server_name is not None and not override:
        raise UsageError(f"{server_name[1]}: must not be empty")
    return TLSConfig(paths["tls_ca"], paths["tls_cert"], paths["tls_key"], server_name=override)


def _http_tls(raw: Mapping[str, tuple[str, str] | None]) -> HttpTLSConfig | None:
    names = ("http_tls_cert", "http_tls_key", "http_tls_ca")
    given = {name: item for name in names if (item := raw.get(name)) is not None}
    if not given:
        return None
    for name in ("http_tls_cert", "http_tls_key"):
        if name not in given:
            origins = ", ".join(origin for _, origin in given.values())
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{origins}: HTTPS needs --http-tls-cert and --http-tls-key; missing {flag}"
            )
    paths = {name: _readable_file(item) for name, item in given.items()}
    return HttpTLSConfig(
        cert_file=paths["http_tls_cert"],
        key_file=paths["http_tls_key"],
        ca_file=paths.get("http_tls_ca"),
    )


def _readable_file(item: tuple[str, str]) -> str:
    text, origin = item
    path = text.strip()
    # Checked here so that a typo fails at once with exit status 2; the contents are
    # loaded (and checked) when the server starts.
    if not os.path.isfile(path):
        raise UsageError(f"{origin}: {path!r} is not a file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{origin}: {path!r} is not readable")
    return path


def _secret(item: tuple[str, str] | None) -> str | None:
    if item is None:
        return None
    text, origin = item
    if any(c.isspace() for c in text):
        # A token with spaces cannot travel in an `Authorization: Bearer` header; it is
        # almost always a copy-paste accident (a trailing newline from a secret file).
        raise UsageError(f"{origin}: a token cannot contain whitespace")
    return text


# -- building the node ---------------------------------------------------------------------


def build_discovery(config: ServeConfig, environ: Mapping[str, str] | None = None) -> Discovery:
    """The discovery module that ``config`` names.

    Args:
        config: the validated settings.
        environ: the environment Kubernetes discovery and plugins read (``POD_IP``...);
            default ``os.environ``.

    Raises:
        UsageError: Kubernetes discovery is asked for but not installed, misconfigured,
            or it disagrees with ``--listen``; a discovery plugin refuses its options or
            cannot be loaded.
    """
    if config.discovery not in BUILTIN_DISCOVERIES:
        return _plugin_discovery(config, os.environ if environ is None else environ)
    if config.discovery == "kubernetes":
        try:
            from peer_ring.discovery.k8s import (  # type: ignore[attr-defined,unused-ignore]
                KubernetesDiscovery,
            )
        except ImportError as exc:
            raise UsageError(
                "--discovery kubernetes needs the peer-ring-discovery-k8s package "
                f"(pip install peer-ring-discovery-k8s): {exc}"
            ) from None
        # The pod IP comes from the environment (downward API); --listen, when given,
        # supplies the port and must name the same host.
        port = split_address(config.listen)[1] if config.listen is not None else None
        try:
            discovery: Discovery = KubernetesDiscovery.from_env(port=port, environ=environ)
        except InvalidArgumentError as exc:
            raise UsageError(f"kubernetes discovery: {exc}") from None
        if config.listen is not None and discovery.self_address != config.listen:
            raise UsageError(
                f"--listen {config.listen} differs from the address Kubernetes discovery "
                f"publishes for this pod ({discovery.self_address}); drop --listen or make "
                "them agree"
            )
        return discovery
    from peer_ring.discovery.static import FileDiscovery, StaticDiscovery

    assert config.listen is not None  # checked by _validate for static discovery
    if config.peers_file is not None:
        try:
            return FileDiscovery(config.peers_file, self_address=config.listen)
        except InvalidArgumentError as exc:
            raise UsageError(f"--peers-file: {exc}") from None
    peers = list(config.peers) or [config.listen]
    return StaticDiscovery(peers, self_address=config.listen)


def _plugin_discovery(config: ServeConfig, environ: Mapping[str, str]) -> Discovery:
    name = config.discovery
    try:
        factory = load_factory(name)
    except LookupError:
        raise UsageError(f"--discovery {name}: no installed package provides it") from None
    except Exception as exc:  # a broken plugin: say which and why, do not crash
        raise UsageError(f"--discovery {name}: cannot load its package: {exc}") from None
    try:
        discovery = factory(config.listen, dict(config.discovery_options), environ)
    except ValueError as exc:
        raise UsageError(f"{name} discovery: {exc}") from None
    if not isinstance(discovery, Discovery):
        raise UsageError(f"{name} discovery: its factory returned {type(discovery).__name__}")
    if config.listen is not None and discovery.self_address != config.listen:
        raise UsageError(
            f"--listen {config.listen} differs from the address {name} discovery publishes "
            f"for this node ({discovery.self_address})"
        )
    return discovery


def build_store(config: ServeConfig, discovery: Discovery | None = None) -> KVStore:
    """The :class:`~peer_ring.kv.KVStore` that ``config`` describes (not started).

    Raises:
        UsageError: a TLS file is not usable (not PEM, say).
    """
    from peer_ring.kv import KVStore

    discovery = discovery if discovery is not None else build_discovery(config)
    peer = config.peer_config()
    try:
        return KVStore(
            discovery,
            replication=config.replication,
            quorum=config.quorum,
            max_bytes=config.max_bytes,
            max_value_bytes=config.max_value_bytes,
            config=peer,
        )
    except InvalidArgumentError as exc:
        if config.tls is None:
            raise
        raise UsageError(f"--tls-*: {exc}") from None
